/**
 * What the parser fuzzer found in the readers of .npz, PNG/JPEG folders, ONNX and TensorFlow.js files, each
 * pinned by a small hand-made file: sizes declared in headers are checked against the bytes the file holds
 * before anything is allocated, shard paths stay inside the model's folder after symlinks are resolved, and a
 * model refused halfway through its import leaves no tensors behind.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import * as tf from '@tensorflow/tfjs-core';
import { zipSync } from 'fflate';
import { onnx } from 'onnx-proto';
import { PNG } from 'pngjs';
import * as jpeg from 'jpeg-js';
import { useWasm } from '../helpers/backend';
import { InputError } from '../../src/engine/errors';
import { encodeNpy } from '../../src/engine/formats/data/npy';
import { readNpz } from '../../src/engine/formats/data/npz';
import { decodeJpeg, decodePng, readImageFolder } from '../../src/engine/formats/data/imagefolder';
import { loadModelFile, saveModelFile } from '../../src/engine/model_files/model_io';
import { exportOnnx } from '../../src/engine/model_files/onnx_export';
import { buildModel } from '../../src/engine/models';
import { pngChunk } from '../fuzz/mutate';

/** ArrayBuffer bytes allocated while `f` runs and still reachable or not yet collected. */
function arrayBytesDuring(f: () => void): number {
  const before = process.memoryUsage().arrayBuffers;
  try {
    f();
  } catch {
    // measured either way
  }
  return process.memoryUsage().arrayBuffers - before;
}

function refuses(f: () => unknown, message: RegExp): void {
  assert.throws(f, (e: unknown) => e instanceof InputError && message.test(e.message));
}

describe('hardening: readers', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-readers-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  describe('.npz', () => {
    /** A deflated .npz whose zip headers claim `size` bytes for every array. */
    function npzClaiming(size: number): string {
      const zip = Buffer.from(
        zipSync({
          'x.npy': [encodeNpy(new Uint8Array(2 * 4 * 4), [2, 4, 4]), { level: 6 }],
          'y.npy': [encodeNpy(BigInt64Array.from([0n, 1n]), [2]), { level: 6 }],
        }),
      );
      for (let i = 0; i + 4 <= zip.length; i++) {
        if (zip.readUInt32LE(i) === 0x04034b50) zip.writeUInt32LE(size, i + 22);
        if (zip.readUInt32LE(i) === 0x02014b50) zip.writeUInt32LE(size, i + 24);
      }
      const file = path.join(dir, 'd.npz');
      fs.writeFileSync(file, zip);
      return file;
    }

    it('refuses arrays that claim more than their compressed bytes can inflate to, before allocating', () => {
      const file = npzClaiming(1 << 30);
      assert.ok(fs.statSync(file).size < 1024);
      // fflate allocates the declared size up front: this file used to cost a gigabyte and read "fine".
      const grew = arrayBytesDuring(() => refuses(() => readNpz(file, { numClasses: 10 }), /claims to expand \d+ bytes to 1073741824/));
      assert.ok(grew < 16 << 20, `grew ${grew} bytes`);
      refuses(() => readNpz(npzClaiming(0xffffffff)), /claims to expand/);
    });

    it('still reads what numpy writes (stored and deflated)', () => {
      for (const level of [0, 6] as const) {
        const file = path.join(dir, `ok${level}.npz`);
        fs.writeFileSync(file, zipSync({ 'x.npy': [encodeNpy(Uint8Array.from({ length: 32 }, (_, i) => i * 8), [2, 4, 4]), { level }], 'y.npy': [encodeNpy(BigInt64Array.from([3n, 1n]), [2]), { level }] }));
        const set = readNpz(file, { numClasses: 10 });
        assert.deepEqual([set.n, ...set.shape], [2, 4, 4, 1]);
        assert.deepEqual([...set.y], [3, 1]);
        assert.equal(set.x[5], Math.fround(40 / 255));
      }
    });
  });

  describe('PNG and JPEG', () => {
    const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    function pngOf(w: number, h: number, rows: Buffer): Buffer {
      const ihdr = Buffer.alloc(13);
      ihdr.writeUInt32BE(w, 0);
      ihdr.writeUInt32BE(h, 4);
      ihdr[8] = 8;
      ihdr[9] = 2;
      return Buffer.concat([sig, pngChunk('IHDR', ihdr), pngChunk('IDAT', zlib.deflateSync(rows)), pngChunk('IEND', new Uint8Array(0))]);
    }

    it('refuses a PNG whose declared size its image data cannot hold, before pngjs allocates it', () => {
      // 7000x7000 RGB needs 147 MB of rows; this file holds 100 bytes (one row of zeros, deflated).
      const lying = pngOf(7000, 7000, Buffer.alloc(21001));
      assert.ok(lying.length < 200);
      const grew = arrayBytesDuring(() => refuses(() => decodePng(lying, 'x.png'), /declares 7000x7000 pixels but holds only \d+ bytes of compressed image data/));
      assert.ok(grew < 16 << 20, `grew ${grew} bytes`);
      refuses(() => decodePng(lying.subarray(0, 30), 'x.png'), /not a PNG file/);
      // A real one of the same kind decodes.
      const p = new PNG({ width: 3, height: 2 });
      p.data.fill(200);
      const img = decodePng(PNG.sync.write(p), 'ok.png');
      assert.deepEqual(img.shape, [2, 3, 1]);
      assert.equal(img.data[0], Math.fround(200 / 255));
    });

    it('refuses a JPEG frame larger than its bytes can encode (at least one bit per 8x8 block)', () => {
      const good = Buffer.from(jpeg.encode({ data: Buffer.alloc(8 * 8 * 4, 128), width: 8, height: 8 }, 90).data);
      const lying = Buffer.from(good);
      const sof = lying.indexOf(Buffer.from([0xff, 0xc0]));
      lying.writeUInt16BE(7000, sof + 5);
      lying.writeUInt16BE(7000, sof + 7);
      // jpeg-js used to allocate ~1.3 GB for this 700-byte file before failing on the missing scan data.
      const grew = arrayBytesDuring(() => refuses(() => decodeJpeg(lying, 'x.jpg'), /frame declares more pixels than \d+ bytes can hold/));
      assert.ok(grew < 16 << 20, `grew ${grew} bytes`);
      assert.deepEqual(decodeJpeg(good, 'ok.jpg').shape, [8, 8, 1]);
    });

    it('an image folder with one lying PNG is one InputError naming the file', () => {
      for (const k of ['0', '1']) fs.mkdirSync(path.join(dir, k));
      const p = new PNG({ width: 6, height: 6 });
      p.data.fill(90);
      fs.writeFileSync(path.join(dir, '0', 'a.png'), PNG.sync.write(p));
      fs.writeFileSync(path.join(dir, '1', 'b.png'), pngOf(7000, 7000, Buffer.alloc(21001)));
      assert.throws(
        () => readImageFolder(dir, { numClasses: 10 }),
        (e: unknown) => e instanceof InputError && e.where === path.join(dir, '1', 'b.png') && /declares 7000x7000/.test(e.message),
      );
    });
  });

  describe('model graphs', () => {
    before(useWasm);

    function tiny() {
      return buildModel({ arch: 'plain-cnn', inputShape: [8, 8, 1], numClasses: 3, options: { layers: [4, 'M', 6] } });
    }

    it('an ONNX graph refused halfway through its import leaves no tensors behind', async () => {
      const m = tiny();
      const proto = onnx.ModelProto.decode(await exportOnnx(m));
      m.dispose();
      // The last node reads a value nothing computes: the weights of every node before it were already made.
      const last = proto.graph!.node![proto.graph!.node!.length - 1];
      last.input = ['nowhere', ...last.input!.slice(1)];
      const file = path.join(dir, 'broken.onnx');
      fs.writeFileSync(file, onnx.ModelProto.encode(proto).finish());
      const before = tf.memory().numTensors;
      refuses(() => loadModelFile(file, 'job'), /input nowhere is not produced by an earlier node/);
      assert.equal(tf.memory().numTensors, before);
    });

    it('TensorFlow.js: a refused model leaves no tensors; shards must be regular files inside the folder', async () => {
      const m = tiny();
      const file = path.join(dir, 'model.json');
      await saveModelFile(m, file, 'tfjs');
      m.dispose();
      const good = JSON.parse(fs.readFileSync(file, 'utf8'));
      const shard: string = good.weightsManifest[0].paths[0];
      const write = (mut: (j: any) => void) => {
        const j = JSON.parse(JSON.stringify(good));
        mut(j);
        fs.writeFileSync(file, JSON.stringify(j));
      };
      const before = tf.memory().numTensors;
      // A BatchNorm weight of the wrong shape fails after the layers before it were built.
      write((j) => (j.weightsManifest[0].weights.find((w: { name: string }) => /beta/.test(w.name)).shape = [0]));
      refuses(() => loadModelFile(file, 'job'), /has shape \[0\] but the layer needs/);
      assert.equal(tf.memory().numTensors, before);

      fs.writeFileSync(path.join(dir, '..', `${path.basename(dir)}-secret.bin`), Buffer.alloc(1 << 16, 7));
      fs.symlinkSync(path.join(dir, '..', `${path.basename(dir)}-secret.bin`), path.join(dir, 'link.bin'));
      fs.mkdirSync(path.join(dir, 'sub'));
      try {
        for (const [p, msg] of [
          ['link.bin', /link\.bin links outside the model's folder/],
          ['sub', /sub is not a file/],
          ['w%.bin', /is not valid URL encoding/],
          ['%2e%2e%2fsecret.bin', /is outside the model's folder/],
          ['/dev/zero', /is outside the model's folder/],
        ] as const) {
          write((j) => (j.weightsManifest[0].paths = [p]));
          refuses(() => loadModelFile(file, 'job'), msg);
        }
        assert.equal(tf.memory().numTensors, before);
        // A link inside the folder is fine: only where it points matters.
        fs.symlinkSync(shard, path.join(dir, 'alias.bin'));
        write((j) => (j.weightsManifest[0].paths = ['alias.bin']));
        const { model, info } = loadModelFile(file, 'job');
        assert.equal(info.numClasses, 3);
        model.dispose();
      } finally {
        fs.rmSync(path.join(dir, '..', `${path.basename(dir)}-secret.bin`), { force: true });
      }
    });
  });
});
