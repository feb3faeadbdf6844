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

export function decodePng(buf: Buffer, file: string): DecodedImage {
  // IHDR is the first chunk: signature (8) + length (4) + "IHDR" (4) + width (4) + height (4).
  if (buf.length < 24 || buf.readUInt32BE(0) !== 0x89504e47 || buf.toString('latin1', 12, 16) !== 'IHDR') throw new InputError('not a PNG file', file);
  const w = buf.readUInt32BE(16);
  const h = buf.readUInt32BE(20);
  if (w * h > MAX_PIXELS) throw new InputError(`PNG is ${w}x${h}, larger than the ${MAX_PIXELS / 1e6} megapixels we decode`, file);
  let png: { width: number; height: number; data: Buffer };
  try {
    png = PNG.sync.read(buf);
  } catch (e) {
    throw new InputError(`corrupt PNG: ${(e as Error).message}`, file);
  }
  return fromRgba(png.data, png.width, png.height);
}

export function decodeJpeg(buf: Buffer, file: string): DecodedImage {
  let img: { width: number; height: number; data: Uint8Array };
  try {
    img = jpeg.decode(buf, { useTArray: true, formatAsRGBA: true, maxResolutionInMP: MAX_PIXELS / 1e6, maxMemoryUsageInMB: 1024 });
  } catch (e) {
    throw new InputError(`corrupt JPEG: ${(e as Error).message}`, file);
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
