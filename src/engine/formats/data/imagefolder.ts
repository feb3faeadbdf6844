/**
 * Image folders: one sub-folder per class holding PNG or JPEG files, as torchvision's ImageFolder reads them.
 * Class folders named by integers ("0", "1", ... "9") give those labels; otherwise the names are sorted and
 * numbered in that order (torchvision's convention), so `airplane, automobile, ...` map to 0, 1, ....
 *
 * Decoding uses pngjs and jpeg-js: pure JavaScript (no native build, so the extension installs anywhere the
 * engine runs), maintained, and already dependencies of the project for trigger images. Both decoders are
 * bounded: a PNG's declared size is checked before it is inflated, and jpeg-js gets resolution and memory
 * limits. Pixels become float [0,1] RGB (alpha is dropped: the models take no alpha channel), then are
 * converted to the model's channels and, when asked, resized (convert.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PNG } from 'pngjs';
import * as jpeg from 'jpeg-js';
import type { ImageSet } from '../../data/dataset';
import { InputError } from '../../errors';
import { checkLabels, stackImages, type DataTarget, type Shape } from './convert';

/** Largest image we decode (pixels): 50 MP is far beyond any classifier input and keeps memory bounded. */
const MAX_PIXELS = 50_000_000;
const IMAGE_EXT = /\.(png|jpe?g)$/i;
// Files a file manager or an OS leaves in folders; everything else that is not an image is refused by name.
const IGNORED = /^(\.|Thumbs\.db$|desktop\.ini$)/i;

/** A decoded image as [0,1] floats: 1 channel when every pixel is grey, else 3 (RGB). */
export interface DecodedImage {
  data: Float32Array;
  shape: Shape;
}

function fromRgba(rgba: Uint8Array, w: number, h: number): DecodedImage {
  let grey = true;
  for (let p = 0; p < w * h && grey; p++) grey = rgba[p * 4] === rgba[p * 4 + 1] && rgba[p * 4] === rgba[p * 4 + 2];
  const c = grey ? 1 : 3;
  const data = new Float32Array(w * h * c);
  for (let p = 0; p < w * h; p++) for (let k = 0; k < c; k++) data[p * c + k] = rgba[p * 4 + k] / 255;
  return { data, shape: [h, w, c] };
}

/** Deflate cannot expand more than ~1032:1 (the same bound the zip readers use). */
const MAX_DEFLATE_RATIO = 1032;
/** Channels of each PNG colour type: grey, RGB, palette index, grey+alpha, RGBA. */
const PNG_CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

/**
 * The decoded size a PNG declares, checked against the compressed image data it actually holds before
 * pngjs allocates it (pngjs sizes its inflate buffer and bitmap from the header alone): a 100-byte file
 * declaring 7000x7000 is refused instead of costing a gigabyte.
 */
function checkPngSize(buf: Buffer, file: string): void {
  const w = buf.readUInt32BE(16);
  const h = buf.readUInt32BE(20);
  if (w === 0 || h === 0) throw new InputError(`PNG is ${w}x${h}: no pixels`, file);
  if (w * h > MAX_PIXELS) throw new InputError(`PNG is ${w}x${h}, larger than the ${MAX_PIXELS / 1e6} megapixels we decode`, file);
  const depth = buf[24];
  const channels = PNG_CHANNELS[buf[25]];
  if (!channels || ![1, 2, 4, 8, 16].includes(depth)) throw new InputError(`PNG has an unsupported colour type or bit depth (type ${buf[25]}, depth ${depth})`, file);
  let idat = 0;
  for (let o = 8; o + 8 <= buf.length; ) {
    const len = buf.readUInt32BE(o);
    const type = buf.toString('latin1', o + 4, o + 8);
    if (type === 'IDAT') idat += Math.min(len, buf.length - o - 8);
    if (type === 'IEND') break;
    o += 12 + len;
  }
  // Filtered rows: one filter byte per row (per pass when interlaced: at most 7 more per row).
  const rows = Math.ceil((w * channels * depth) / 8) + 1;
  const inflated = rows * h;
  if (inflated > idat * MAX_DEFLATE_RATIO + 1024) {
    throw new InputError(`PNG declares ${w}x${h} pixels but holds only ${idat} bytes of compressed image data (truncated or corrupt)`, file);
  }
}

export function decodePng(buf: Buffer, file: string): DecodedImage {
  // IHDR is the first chunk: signature (8) + length (4) + "IHDR" (4) + 13 bytes of header + CRC (4).
  if (buf.length < 33 || buf.readUInt32BE(0) !== 0x89504e47 || buf.toString('latin1', 12, 16) !== 'IHDR') throw new InputError('not a PNG file', file);
  checkPngSize(buf, file);
  let png: { width: number; height: number; data: Buffer };
  try {
    png = PNG.sync.read(buf);
  } catch (e) {
    throw new InputError(`corrupt PNG: ${(e as Error).message}`, file);
  }
  return fromRgba(png.data, png.width, png.height);
}

/**
 * Every 8x8 block of a JPEG's largest component costs at least one bit of entropy-coded data (a DC code;
 * progressive AC scans can skip blocks, DC scans cannot), so a file of n bytes holds at most 512 n pixels.
 * A frame header claiming more is a lie that jpeg-js would allocate before finding out.
 */
const JPEG_PIXELS_PER_BYTE = 512;

export function decodeJpeg(buf: Buffer, file: string): DecodedImage {
  const maxPixels = Math.min(MAX_PIXELS, JPEG_PIXELS_PER_BYTE * buf.length + 64 * 64);
  // jpeg-js holds 16-bit coefficients per component (~4 bytes per pixel each, up to 4 components), the
  // component outputs and the RGBA image: 24 bytes per pixel is an upper estimate.
  const maxMemoryUsageInMB = Math.ceil(16 + (maxPixels * 24) / 2 ** 20);
  let img: { width: number; height: number; data: Uint8Array };
  try {
    img = jpeg.decode(buf, { useTArray: true, formatAsRGBA: true, maxResolutionInMP: maxPixels / 1e6, maxMemoryUsageInMB });
  } catch (e) {
    const msg = (e as Error).message;
    if (/maxResolutionInMP/.test(msg)) throw new InputError(`corrupt JPEG: its frame declares more pixels than ${buf.length} bytes can hold`, file);
    throw new InputError(`corrupt JPEG: ${msg}`, file);
  }
  if (!(img.width > 0 && img.height > 0)) throw new InputError('JPEG has no pixels', file);
  return fromRgba(img.data, img.width, img.height);
}

export function decodeImageFile(file: string): DecodedImage {
  const buf = fs.readFileSync(file);
  return /\.png$/i.test(file) ? decodePng(buf, file) : decodeJpeg(buf, file);
}

/** Class folders and their labels. */
export function listClasses(root: string): Array<{ name: string; label: number }> {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(root, { withFileTypes: true });
  } catch (e) {
    throw new InputError(`cannot read the image folder (${(e as NodeJS.ErrnoException).code ?? e})`, root);
  }
  const dirs = entries.filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => e.name);
  if (dirs.length === 0) throw new InputError('an image folder needs one sub-folder per class; this one has none', root);
  if (dirs.every((d) => /^\d+$/.test(d))) {
    const seen = new Map<number, string>();
    for (const d of dirs) {
      const label = Number(d);
      if (seen.has(label)) throw new InputError(`class folders "${seen.get(label)}" and "${d}" name the same label ${label}`, root);
      seen.set(label, d);
    }
    return dirs.map((name) => ({ name, label: Number(name) })).sort((a, b) => a.label - b.label);
  }
  return dirs.sort().map((name, label) => ({ name, label }));
}

export function readImageFolder(root: string, target: DataTarget = {}): ImageSet {
  const classes = listClasses(root);
  if (target.numClasses !== undefined) {
    const bad = classes.find((c) => c.label >= target.numClasses!);
    if (bad) {
      const why = /^\d+$/.test(bad.name) ? `label ${bad.label}` : `the ${bad.label + 1}th class in sorted order`;
      throw new InputError(`class folder "${bad.name}" is ${why}, outside the model's ${target.numClasses} classes (${classes.length} class folders)`, root);
    }
  }
  const images: Array<DecodedImage & { file: string }> = [];
  const labels: number[] = [];
  for (const c of classes) {
    const dir = path.join(root, c.name);
    const files = fs
      .readdirSync(dir, { withFileTypes: true })
      .filter((e) => !IGNORED.test(e.name))
      .map((e) => {
        if (!e.isFile() || !IMAGE_EXT.test(e.name)) throw new InputError(`not a PNG or JPEG image: ${e.name}${e.isDirectory() ? ' (class folders hold images, not folders)' : ''}`, path.join(dir, e.name));
        return e.name;
      })
      .sort();
    if (files.length === 0) throw new InputError(`class folder "${c.name}" has no PNG or JPEG images`, dir);
    for (const f of files) {
      const file = path.join(dir, f);
      images.push({ ...decodeImageFile(file), file });
      labels.push(c.label);
    }
  }
  const { x, shape } = stackImages(images, target, root);
  const y = Int32Array.from(labels);
  const k = target.numClasses ?? classes[classes.length - 1].label + 1;
  checkLabels(y, k, root);
  return { n: y.length, shape, x, y, numClasses: k };
}
