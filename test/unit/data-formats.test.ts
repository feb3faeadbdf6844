import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { PNG } from 'pngjs';
import * as jpeg from 'jpeg-js';
import { zipSync } from 'fflate';
import { loadDataSource } from '../../src/engine/formats/data';
import { readImageFolder } from '../../src/engine/formats/data/imagefolder';
import { encodeNpy, readNpyPair } from '../../src/engine/formats/data/npy';
import { encodeNpz, readNpz } from '../../src/engine/formats/data/npz';
import { readCifar10 } from '../../src/engine/formats/data/cifar10';
import { conformSet, resizeImage } from '../../src/engine/formats/data/convert';
import { InputError } from '../../src/engine/errors';
import type { ImageSet } from '../../src/engine/data/dataset';

/** The InputError's "message (where)" line, as the CLI prints it. */
function inputError(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof InputError, `expected an InputError, got ${e}`);
    return `${e.message} (${e.where})`;
  }
  assert.fail('expected an InputError');
}

function png(w: number, h: number, pixel: (x: number, y: number) => [number, number, number], colorType: 0 | 2 | 6 = 6): Buffer {
  const p = new PNG({ width: w, height: h, colorType, inputColorType: 6, inputHasAlpha: true } as never);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const [r, g, b] = pixel(x, y);
      // Alpha only where the PNG keeps it (pngjs composites it away when writing grey or RGB).
      p.data.set([r, g, b, colorType === 6 ? 200 : 255], (y * w + x) * 4);
    }
  return PNG.sync.write(p, { colorType, inputColorType: 6, inputHasAlpha: true } as never);
}

const sum = (a: ArrayLike<number>) => Array.from(a).reduce((s, v) => s + v, 0);

describe('data formats', () => {
  let dir: string;
  const mk = (...parts: string[]) => {
    const p = path.join(dir, ...parts);
    fs.mkdirSync(p, { recursive: true });
    return p;
  };
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-data-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  describe('image folder (PNG and JPEG)', () => {
    it('reads numbered class folders with exact PNG pixels, grey and RGB, alpha dropped', () => {
      for (const c of [0, 1, 2]) {
        const d = mk('set', String(c));
        // Two grey images per class whose pixels encode class, image and position.
        for (const i of [0, 1]) fs.writeFileSync(path.join(d, `img${i}.png`), png(3, 2, (x, y) => Array(3).fill(c * 60 + i * 20 + y * 3 + x) as [number, number, number], 0));
      }
      const set = readImageFolder(path.join(dir, 'set'), { numClasses: 3 });
      assert.deepEqual(set.shape, [2, 3, 1]);
      assert.deepEqual(Array.from(set.y), [0, 0, 1, 1, 2, 2]);
      assert.equal(set.numClasses, 3);
      for (let n = 0; n < 6; n++)
        for (let p = 0; p < 6; p++) assert.equal(set.x[n * 6 + p], Math.fround((set.y[n] * 60 + (n % 2) * 20 + Math.floor(p / 3) * 3 + (p % 3)) / 255));

      // The same folder for an RGB model: grey replicated to three channels.
      const rgb = readImageFolder(path.join(dir, 'set'), { shape: [2, 3, 3], numClasses: 3 });
      assert.deepEqual(rgb.shape, [2, 3, 3]);
      for (let p = 0; p < 6; p++) assert.deepEqual(Array.from(rgb.x.subarray(p * 3, p * 3 + 3)), Array(3).fill(set.x[p]));
    });

    it('names classes in sorted order, reads JPEG, converts RGB to grey by luma', () => {
      fs.writeFileSync(path.join(mk('f', 'dog'), 'a.png'), png(4, 4, () => [200, 100, 50]));
      const jpg = jpeg.encode({ width: 4, height: 4, data: Buffer.alloc(64, 0).map((_, i) => (i % 4 === 3 ? 255 : [30, 160, 90][i % 4])) }, 100).data;
      fs.writeFileSync(path.join(mk('f', 'cat'), 'b.JPG'), jpg);
      const set = readImageFolder(path.join(dir, 'f'), { shape: [4, 4, 3] });
      assert.deepEqual(Array.from(set.y), [0, 1], 'cat < dog');
      // JPEG is lossy: a flat colour comes back within a few levels.
      for (let p = 0; p < 16; p++) [30, 160, 90].forEach((v, c) => assert.ok(Math.abs(set.x[p * 3 + c] * 255 - v) <= 3, `jpeg pixel ${p}.${c}: ${set.x[p * 3 + c] * 255}`));
      for (let p = 0; p < 16; p++) assert.deepEqual(Array.from(set.x.subarray(48 + p * 3, 48 + p * 3 + 3)).map((v) => Math.round(v * 255)), [200, 100, 50]);
      const grey = readImageFolder(path.join(dir, 'f'), { shape: [4, 4, 1] });
      assert.ok(Math.abs(grey.x[16] - (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255) < 1e-6);
    });

    it('refuses mixed sizes unless asked to resize, then resizes to the model input', () => {
      fs.writeFileSync(path.join(mk('m', '0'), 'a.png'), png(4, 4, () => [100, 100, 100]));
      fs.writeFileSync(path.join(mk('m', '1'), 'b.png'), png(8, 6, () => [40, 40, 40]));
      const root = path.join(dir, 'm');
      const msg = inputError(() => readImageFolder(root, { shape: [4, 4, 1], numClasses: 2 }));
      assert.match(msg, /^images of different sizes \(4x4 in .*a\.png, 6x8 in .*b\.png\); add "resize": true/);
      assert.ok(msg.endsWith(`(${root})`));
      const set = readImageFolder(root, { shape: [5, 5, 1], numClasses: 2, resize: true });
      assert.deepEqual(set.shape, [5, 5, 1]);
      // A flat image stays flat through resizing, up or down.
      for (let p = 0; p < 25; p++) {
        assert.ok(Math.abs(set.x[p] - 100 / 255) < 1e-6);
        assert.ok(Math.abs(set.x[25 + p] - 40 / 255) < 1e-6);
      }
      // All the same size but not the model's: refused with the hint too.
      fs.rmSync(path.join(root, '1'), { recursive: true });
      assert.match(inputError(() => readImageFolder(root, { shape: [5, 5, 1], numClasses: 2 })), /^images are 4x4 but the model takes 5x5; add "resize": true/);
    });

    it('refuses an empty class folder, a class outside the model, a non-image file and a corrupt image', () => {
      fs.writeFileSync(path.join(mk('e', '0'), 'a.png'), png(2, 2, () => [1, 2, 3]));
      mk('e', '1');
      assert.equal(inputError(() => readImageFolder(path.join(dir, 'e'))), `class folder "1" has no PNG or JPEG images (${path.join(dir, 'e', '1')})`);
      fs.writeFileSync(path.join(dir, 'e', '1', 'b.png'), png(2, 2, () => [1, 2, 3]));
      fs.writeFileSync(path.join(mk('e', '5'), 'c.png'), png(2, 2, () => [1, 2, 3]));
      assert.equal(inputError(() => readImageFolder(path.join(dir, 'e'), { numClasses: 3 })), `class folder "5" is label 5, outside the model's 3 classes (3 class folders) (${path.join(dir, 'e')})`);
      fs.rmSync(path.join(dir, 'e', '5'), { recursive: true });
      fs.writeFileSync(path.join(dir, 'e', '1', 'notes.txt'), 'hello');
      assert.equal(inputError(() => readImageFolder(path.join(dir, 'e'))), `not a PNG or JPEG image: notes.txt (${path.join(dir, 'e', '1', 'notes.txt')})`);
      fs.rmSync(path.join(dir, 'e', '1', 'notes.txt'));
      fs.writeFileSync(path.join(dir, 'e', '1', '.DS_Store'), 'ignored');
      assert.equal(readImageFolder(path.join(dir, 'e')).n, 2, 'hidden files are skipped');
      fs.writeFileSync(path.join(dir, 'e', '1', 'b.png'), png(2, 2, () => [1, 2, 3]).subarray(0, 40));
      assert.match(inputError(() => readImageFolder(path.join(dir, 'e'))), /^corrupt PNG: .*b\.png\)$/);
      assert.match(inputError(() => readImageFolder(mk('none'))), /^an image folder needs one sub-folder per class; this one has none/);
    });

    it('refuses a PNG claiming a huge size before inflating it', () => {
      const b = png(2, 2, () => [0, 0, 0]);
      b.writeUInt32BE(100000, 16);
      b.writeUInt32BE(100000, 20);
      fs.writeFileSync(path.join(mk('h', '0'), 'big.png'), b);
      assert.match(inputError(() => readImageFolder(path.join(dir, 'h'))), /^PNG is 100000x100000, larger than the 50 megapixels we decode/);
    });
  });

  describe('.npy pairs', () => {
    it('reads uint8 (N,H,W) with int64 labels, converts channels, and round-trips the writer', () => {
      const x = Uint8Array.from({ length: 3 * 2 * 2 }, (_, i) => i * 20);
      fs.writeFileSync(path.join(dir, 'x.npy'), encodeNpy(x, [3, 2, 2]));
      fs.writeFileSync(path.join(dir, 'y.npy'), encodeNpy(BigInt64Array.from([2n, 0n, 1n]), [3]));
      const set = readNpyPair(path.join(dir, 'x.npy'), path.join(dir, 'y.npy'), { numClasses: 3 });
      assert.deepEqual(set.shape, [2, 2, 1]);
      assert.deepEqual(Array.from(set.y), [2, 0, 1]);
      assert.deepEqual(Array.from(set.x), Array.from(x, (v) => Math.fround(v / 255)));
      const rgb = readNpyPair(path.join(dir, 'x.npy'), path.join(dir, 'y.npy'), { shape: [2, 2, 3], numClasses: 3 });
      assert.deepEqual(Array.from(rgb.x.subarray(0, 6)), [0, 0, 0, 20, 20, 20].map((v) => Math.fround(v / 255)));
      assert.match(inputError(() => readNpyPair(path.join(dir, 'x.npy'), path.join(dir, 'y.npy'), { numClasses: 2 })), /^label 2 at index 0 is outside the model's 2 classes \(0\.\.1\) \(.*y\.npy\)$/);
      fs.writeFileSync(path.join(dir, 'f.npy'), encodeNpy(Float32Array.from([0, 0.5, 1.5, 1]), [1, 2, 2]));
      fs.writeFileSync(path.join(dir, 'l.npy'), encodeNpy(BigInt64Array.from([0n]), [1]));
      assert.match(inputError(() => readNpyPair(path.join(dir, 'f.npy'), path.join(dir, 'l.npy'))), /^float images must be in \[0,1\]; found 1\.5 at flat index 2/);
      // An int64 label past the Int32 range is refused, not wrapped to class 0.
      fs.writeFileSync(path.join(dir, 'big.npy'), encodeNpy(BigInt64Array.from([2n, 2n ** 62n, 1n]), [3]));
      assert.match(inputError(() => readNpyPair(path.join(dir, 'x.npy'), path.join(dir, 'big.npy'))), /^label 4611686018427388000 at index 1 is not a class index \(largest accepted 65535\)/);
      // The class count of 300,000 labels (no model given) without spreading them into arguments.
      const n = 300_000;
      fs.writeFileSync(path.join(dir, 'many-x.npy'), encodeNpy(new Uint8Array(n), [n, 1, 1]));
      fs.writeFileSync(path.join(dir, 'many-y.npy'), encodeNpy(BigInt64Array.from({ length: n }, (_, i) => BigInt(i % 7)), [n]));
      const many = readNpyPair(path.join(dir, 'many-x.npy'), path.join(dir, 'many-y.npy'));
      assert.equal(many.numClasses, 7);
      assert.equal(many.y[n - 1], (n - 1) % 7);
    });
  });

  describe('.npz', () => {
    it('reads a deflated archive (savez_compressed layout) found by rank, and our own writer by name', () => {
      const x = Uint8Array.from({ length: 4 * 3 * 3 * 3 }, (_, i) => (i * 7) % 256);
      const y = BigInt64Array.from([1n, 0n, 1n, 0n]);
      // savez_compressed: deflated entries, arbitrary names.
      fs.writeFileSync(path.join(dir, 'c.npz'), zipSync({ 'pixels.npy': [encodeNpy(x, [4, 3, 3, 3]), { level: 6 }], 'targets.npy': [encodeNpy(y, [4]), { level: 6 }] }));
      const set = readNpz(path.join(dir, 'c.npz'), { shape: [3, 3, 3], numClasses: 2 });
      assert.deepEqual([set.n, ...set.shape], [4, 3, 3, 3]);
      assert.deepEqual(Array.from(set.y), [1, 0, 1, 0]);
      assert.deepEqual(Array.from(set.x), Array.from(x, (v) => Math.fround(v / 255)));

      const f = Float32Array.from({ length: 2 * 2 * 2 }, (_, i) => i / 8);
      fs.writeFileSync(path.join(dir, 'o.npz'), encodeNpz([['x', f, [2, 2, 2]], ['y', BigInt64Array.from([1n, 1n]), [2]], ['extra', f, [2, 2, 2]], ['idx', BigInt64Array.from([5n, 6n]), [2]]]));
      const own = loadDataSource({ path: path.join(dir, 'o.npz'), format: 'npz' }, 'aux[0].source', { shape: [2, 2, 1], numClasses: 2 });
      assert.deepEqual(Array.from(own.x), Array.from(f));
      assert.deepEqual(Array.from(own.y), [1, 1]);
    });

    it('refuses a non-zip, an archive without images, and ambiguous arrays', () => {
      fs.writeFileSync(path.join(dir, 'bad.npz'), 'not a zip');
      assert.match(inputError(() => readNpz(path.join(dir, 'bad.npz'))), /^not an \.npz file \(not a zip archive\)/);
      fs.writeFileSync(path.join(dir, 'amb.npz'), encodeNpz([['a', new Float32Array(8), [2, 2, 2]], ['b', new Float32Array(8), [2, 2, 2]], ['c', BigInt64Array.from([0n, 1n]), [2]]]));
      assert.match(inputError(() => readNpz(path.join(dir, 'amb.npz'))), /^cannot tell which array holds the images: several candidates among a \(2,2,2\), b \(2,2,2\), c \(2\)/);
      fs.writeFileSync(path.join(dir, 'trunc.npz'), encodeNpz([['x', new Float32Array(8), [2, 2, 2]], ['y', BigInt64Array.from([0n, 1n]), [2]]]).subarray(0, 100));
      assert.match(inputError(() => readNpz(path.join(dir, 'trunc.npz'))), /^corrupt \.npz archive/);
    });
  });

  describe('CIFAR-10 binary batches', () => {
    /** Records with label i % 10 and pixel (c, p) = (i + 3c + p) mod 256. */
    const batch = (n: number, first = 0) => {
      const b = Buffer.alloc(n * 3073);
      for (let i = 0; i < n; i++) {
        b[i * 3073] = (first + i) % 10;
        for (let c = 0; c < 3; c++) for (let p = 0; p < 1024; p++) b[i * 3073 + 1 + c * 1024 + p] = (first + i + 3 * c + p) % 256;
      }
      return b;
    };

    it('decodes channel-major records to NHWC, picks batches by role in a folder', () => {
      const d = mk('cifar-10-batches-bin');
      fs.writeFileSync(path.join(d, 'data_batch_1.bin'), batch(3, 0));
      fs.writeFileSync(path.join(d, 'data_batch_2.bin'), batch(2, 3));
      fs.writeFileSync(path.join(d, 'test_batch.bin'), batch(4, 100));
      fs.writeFileSync(path.join(d, 'batches.meta.txt'), 'airplane\n');
      const train = readCifar10(d, 'train', { shape: [32, 32, 3], numClasses: 10 });
      assert.deepEqual([train.n, ...train.shape], [5, 32, 32, 3]);
      assert.deepEqual(Array.from(train.y), [0, 1, 2, 3, 4]);
      for (const [i, p, c] of [[0, 0, 0], [1, 5, 2], [4, 1023, 1]]) assert.equal(train.x[(i * 1024 + p) * 3 + c], Math.fround(((i + 3 * c + p) % 256) / 255));
      const test = loadDataSource({ path: d, format: 'cifar10-bin' }, 'data.test', { shape: [32, 32, 3], numClasses: 10 }, 'test');
      assert.deepEqual(Array.from(test.y), [0, 1, 2, 3]);
      assert.equal(test.x[0], Math.fround(100 / 255));
      // A grey 28x28 model: refused without resize, converted with it.
      assert.match(inputError(() => readCifar10(path.join(d, 'test_batch.bin'), 'test', { shape: [28, 28, 1] })), /^images are 32x32 but the model takes 28x28; add "resize": true to the data source/);
      const small = readCifar10(path.join(d, 'test_batch.bin'), 'test', { shape: [16, 16, 1], resize: true });
      assert.deepEqual(small.shape, [16, 16, 1]);
      assert.ok(small.x.every((v) => v >= 0 && v <= 1));
    });

    it('refuses a file that is not a multiple of the record and labels above 9', () => {
      fs.writeFileSync(path.join(dir, 'b.bin'), batch(2).subarray(0, 5000));
      assert.match(inputError(() => readCifar10(path.join(dir, 'b.bin'), 'train')), /^not a CIFAR-10 binary batch: 5000 bytes is not a multiple of the 3073-byte record/);
      const b = batch(2);
      b[3073] = 57;
      fs.writeFileSync(path.join(dir, 'c.bin'), b);
      assert.match(inputError(() => readCifar10(path.join(dir, 'c.bin'), 'train')), /^record 1 has label 57: not a CIFAR-10 batch/);
      assert.match(inputError(() => readCifar10(mk('empty'), 'test')), /^no test_batch\.bin in the CIFAR-10 folder/);
      fs.writeFileSync(path.join(dir, 'd.bin'), batch(2));
      assert.match(inputError(() => readCifar10(path.join(dir, 'd.bin'), 'train', { numClasses: 1 })), /^label 1 at index 1 is outside the model's 1 classes/);
    });
  });

  describe('IDX (MNIST layout)', () => {
    it('reads gzipped image and label files and checks labels against the model', () => {
      const n = 3;
      const head = Buffer.from([0, 0, 8, 3, 0, 0, 0, n, 0, 0, 0, 2, 0, 0, 0, 2]);
      const pix = Buffer.from(Array.from({ length: n * 4 }, (_, i) => i * 10));
      fs.writeFileSync(path.join(dir, 't-images-idx3-ubyte.gz'), zlib.gzipSync(Buffer.concat([head, pix])));
      fs.writeFileSync(path.join(dir, 't-labels-idx1-ubyte.gz'), zlib.gzipSync(Buffer.from([0, 0, 8, 1, 0, 0, 0, n, 4, 0, 9])));
      const set = loadDataSource({ path: path.join(dir, 't-images-idx3-ubyte.gz') }, 'data.test', { shape: [2, 2, 1], numClasses: 10 });
      assert.deepEqual(Array.from(set.y), [4, 0, 9]);
      assert.deepEqual(Array.from(set.x), Array.from(pix, (v) => Math.fround(v / 255)));
      assert.match(inputError(() => loadDataSource({ path: path.join(dir, 't-images-idx3-ubyte.gz') }, 'data.test', { numClasses: 5 })), /^label 9 at index 2 is outside the model's 5 classes/);
    });
  });

  describe('conversion to the model input', () => {
    it('resizes like bilinear with half-pixel centres (PIL BILINEAR), antialiased when shrinking', () => {
      // Upscaling [0, 1] to 4: centres at 0.25, 0.75, 1.25, 1.75 source pixels.
      assert.deepEqual(Array.from(resizeImage(Float32Array.from([0, 1]), [1, 2, 1], 1, 4)), [0, 0.25, 0.75, 1]);
      // Halving a 4-wide checkerboard row: taps 0.75, 0.75, 0.25 (support 2): 3/7 everywhere instead of aliasing to 0 or 1.
      const half = resizeImage(Float32Array.from([0, 1, 0, 1]), [1, 4, 1], 1, 2);
      assert.ok(Math.abs(half[0] - 3 / 7) < 1e-6 && Math.abs(half[1] - 4 / 7) < 1e-6, `${Array.from(half)}`);
      // Mean is preserved by an exact 2x box downscale of a smooth ramp.
      const ramp = Float32Array.from({ length: 64 }, (_, i) => (i % 8) / 7);
      const small = resizeImage(ramp, [8, 8, 1], 4, 4);
      assert.ok(Math.abs(sum(small) / 16 - sum(ramp) / 64) < 1e-6);
    });

    it('refuses a conversion that makes no sense', () => {
      const set: ImageSet = { n: 1, shape: [1, 1, 2], x: Float32Array.from([0.1, 0.2]), y: Int32Array.from([0]), numClasses: 1 };
      assert.equal(inputError(() => conformSet(set, { shape: [1, 1, 3] }, 'f')), "cannot convert 2-channel images to the model's 3 channels (f)");
    });
  });
});
