import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { zipSync } from 'fflate';
import { encodePt, encodeStateDictPickle, readPt, readPtBytes, writePt } from '../../src/engine/formats/pt';
import { TensorRef, unpickle, type PyDict } from '../../src/engine/formats/pickle';
import { InputError } from '../../src/engine/errors';
import type { StateDict } from '../../src/engine/formats/state_dict';
import { assertInputError, assertStateDict, expected, fixture, hasTorch, python, sha256, tmpDir } from '../helpers/checkpoints';

/** Rewrite fields of one entry in the zip's central directory (what fflate reads sizes from). */
function patchCentral(buf: Uint8Array, entry: (name: string) => boolean, patch: (dv: DataView, at: number) => void): Uint8Array {
  const out = Uint8Array.from(buf);
  const dv = new DataView(out.buffer);
  for (let i = 0; i + 46 < out.length; i++) {
    if (dv.getUint32(i, true) !== 0x02014b50) continue;
    const nameLen = dv.getUint16(i + 28, true);
    if (entry(Buffer.from(out.subarray(i + 46, i + 46 + nameLen)).toString('latin1'))) {
      patch(dv, i);
      return out;
    }
  }
  throw new Error('no such central directory entry');
}

/** Local-header data offsets of every record, for the alignment check. */
function recordOffsets(buf: Uint8Array): Map<string, number> {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out = new Map<string, number>();
  let i = 0;
  while (i + 30 <= buf.length && dv.getUint32(i, true) === 0x04034b50) {
    const size = dv.getUint32(i + 18, true);
    const n = dv.getUint16(i + 26, true);
    const x = dv.getUint16(i + 28, true);
    const name = Buffer.from(buf.subarray(i + 30, i + 30 + n)).toString('latin1');
    out.set(name, i + 30 + n + x);
    i += 30 + n + x + size;
  }
  return out;
}

/** A data.pkl with one float tensor whose storage, offset and strides are chosen freely (to build bad views). */
function tensorPickle(o: { numel: number; offset: number; shape: number[]; stride: number[] }): Uint8Array {
  const u = (s: string): number[] => [0x58, s.length, 0, 0, 0, ...Buffer.from(s, 'latin1')];
  const g = (m: string, n: string): number[] => [0x63, ...Buffer.from(`${m}\n${n}\n`, 'latin1')];
  const i = (v: number): number[] => [0x4a, v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
  const tup = (xs: number[]): number[] => [0x28, ...xs.flatMap(i), 0x74];
  return Uint8Array.from([
    0x80, 2, 0x7d, ...u('w'),
    ...g('torch._utils', '_rebuild_tensor_v2'), 0x28,
    0x28, ...u('storage'), ...g('torch', 'FloatStorage'), ...u('0'), ...u('cpu'), ...i(o.numel), 0x74, 0x51,
    ...i(o.offset), ...tup(o.shape), ...tup(o.stride), 0x89, 0x7d, 0x74, 0x52,
    0x73, 0x2e,
  ]);
}

const zipOf = (files: Record<string, Uint8Array>): Uint8Array => zipSync(Object.fromEntries(Object.entries(files).map(([k, v]) => [k, [v, { level: 0 }]])));

describe('PyTorch .pt reader', () => {
  const exp = expected();

  it('reads every dtype, transposed and strided views and storage offsets exactly, and leaves the file unchanged', () => {
    const f = fixture('tiny.pt');
    const before = sha256(f);
    const r = readPtBytes(fs.readFileSync(f), f);
    assertStateDict(r.stateDict, exp.tiny);
    assert.equal(r.key, undefined);
    assert.equal(r.version, '3');
    assertStateDict(readPt(f), exp.tiny);
    assert.equal(sha256(f), before);
  });

  it('tensors sharing a storage are independent copies', () => {
    const sd = readPt(fixture('tiny.pt'));
    (sd.get('shared.full')!.data as Float32Array)[5] = 99;
    assert.equal((sd.get('shared.slice')!.data as Float32Array)[0], 1.25);
  });

  it('finds the state_dict nested in a training checkpoint, ignoring optimizer state and Python scalars', () => {
    const a = readPtBytes(fs.readFileSync(fixture('nested_state_dict.pt')), 'n.pt');
    assert.equal(a.key, 'state_dict');
    assertStateDict(a.stateDict, exp.small);
    const b = readPtBytes(fs.readFileSync(fixture('nested_model.pt')), 'm.pt');
    assert.equal(b.key, 'model');
    assertStateDict(b.stateDict, exp.small);
  });

  it('discovers the archive folder name and reads a module state_dict with _metadata', () => {
    assertStateDict(readPt(fixture('renamed_top.pt')), exp.small);
    assertStateDict(readPt(fixture('module_sd.pt')), (exp as unknown as { module_sd: typeof exp.small }).module_sd);
  });

  it('does not guess between several tensor dicts, and says when there is none', () => {
    assertInputError(() => readPt(fixture('ambiguous.pt')), /several tensor dicts \(ema, teacher\)/, fixture('ambiguous.pt'));
    assertInputError(() => readPt(fixture('no_state_dict.pt')), /no state_dict found .*top-level keys: epoch, acc/);
  });

  it('legacy (non-zip) checkpoints get an error that says how to re-save', () => {
    const f = fixture('legacy.pt');
    const e = assertInputError(() => readPt(f), /legacy \(pre-1\.6, non-zip\).*torch\.save\(model\.state_dict\(\), path\)/, f);
    assert.equal(e.exitCode, 2);
  });

  it('malicious checkpoints are refused naming the global, with nothing run', () => {
    const m = exp.markers;
    for (const [file, global, marker] of [
      ['mal_system.pt', 'posix.system', m.system],
      ['mal_eval.pt', 'builtins.eval', m.eval],
      ['mal_popen.pt', 'subprocess.Popen', m.popen],
      ['mal_stack_global.pt', 'os.system', m.stack_global],
      ['mal_inst.pt', 'os.system', m.inst],
      ['mal_hidden.pt', 'posix.system', m.hidden],
    ]) {
      fs.rmSync(marker, { force: true });
      const f = fixture(file);
      const before = sha256(f);
      assertInputError(() => readPt(f), new RegExp(`^refusing to load ${global.replace('.', '\\.')}\\b`), f);
      assert.equal(fs.existsSync(marker), false, `${file}: payload ran`);
      assert.equal(sha256(f), before);
    }
  });

  it('missing, empty and non-zip files are InputErrors', () => {
    assertInputError(() => readPt('/nonexistent/model.pt'), /cannot read the checkpoint: ENOENT/);
    assertInputError(() => readPtBytes(new Uint8Array(0), 'e.pt'), /not a PyTorch checkpoint/);
    assertInputError(() => readPtBytes(Buffer.from('PK this is not really a zip archive at all........'), 'z.pt'), /corrupt zip archive/);
    assertInputError(() => readPtBytes(zipOf({ 'a/b.txt': new Uint8Array(3) }), 'z.pt'), /no <folder>\/data\.pkl/);
  });

  it('every truncation of a checkpoint is an InputError', () => {
    const buf = fs.readFileSync(fixture('tiny.pt'));
    for (let k = 0; k < buf.length; k += 7) assert.throws(() => readPtBytes(buf.subarray(0, k), 't.pt'), InputError, `prefix ${k}`);
  });

  it('random corruption gives an InputError or a well-formed result, never a crash', () => {
    const buf = fs.readFileSync(fixture('tiny.pt'));
    let seed = 99;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    for (let trial = 0; trial < 1500; trial++) {
      const b = Uint8Array.from(buf);
      for (let f = 0; f < 1 + Math.floor(rnd() * 4); f++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
      try {
        readPtBytes(b, 'c.pt');
      } catch (e) {
        if (!(e instanceof InputError)) throw new Error(`trial ${trial}: ${(e as Error).stack}`);
      }
    }
  });

  it('zip sizes larger than the file are refused before anything is allocated', () => {
    const buf = fs.readFileSync(fixture('tiny.pt'));
    const name = (n: string): boolean => n.endsWith('/data/0');
    const mem0 = process.memoryUsage().arrayBuffers;
    // Stored record claiming ~2 GB.
    const stored = patchCentral(buf, name, (dv, at) => {
      dv.setUint32(at + 20, 0x7ffffff0, true);
      dv.setUint32(at + 24, 0x7ffffff0, true);
    });
    assertInputError(() => readPtBytes(stored, 'big.pt'), /claims 2147483632 bytes, more than the file holds/);
    // Deflated record claiming to expand 16 bytes into ~4 GB (a zip bomb header).
    const bomb = patchCentral(buf, name, (dv, at) => {
      dv.setUint16(at + 10, 8, true);
      dv.setUint32(at + 24, 0xfffffff0, true);
    });
    assertInputError(() => readPtBytes(bomb, 'bomb.pt'), /claims to expand \d+ bytes to 4294967280/);
    assert.ok(process.memoryUsage().arrayBuffers - mem0 < 64 << 20, 'no large allocation');
  });

  it('checks storage sizes and views against the records', () => {
    const pkl = encodeStateDictPickle([{ name: 'w', key: '0', dtype: 'float32', shape: [100] }]);
    assertInputError(() => readPtBytes(zipOf({ 'a/data.pkl': pkl, 'a/data/0': new Uint8Array(16) }), 's.pt'), /storage data\/0 has 16 bytes, its tensors need 400/);
    assertInputError(() => readPtBytes(zipOf({ 'a/data.pkl': pkl }), 's.pt'), /missing storage record data\/0/);
    const data = new Uint8Array(16);
    const bad = (o: Parameters<typeof tensorPickle>[0]): Uint8Array => zipOf({ 'a/data.pkl': tensorPickle(o), 'a/data/0': data });
    assertInputError(() => readPtBytes(bad({ numel: 4, offset: 0, shape: [10], stride: [1] }), 'v.pt'), /reaches element 9 of a storage with 4/);
    assertInputError(() => readPtBytes(bad({ numel: 4, offset: 3, shape: [2], stride: [1] }), 'v.pt'), /reaches element 4/);
    assertInputError(() => readPtBytes(bad({ numel: 4, offset: 0, shape: [2, 2], stride: [-1, 1] }), 'v.pt'), /negative offset or stride/);
    // A stride-0 view larger than its storage would let a tiny file ask for gigabytes.
    assertInputError(() => readPtBytes(bad({ numel: 4, offset: 0, shape: [1_000_000_000], stride: [0] }), 'v.pt'), /repeats storage elements/);
    // Overlapping views within the storage size are gathered.
    const ok = readPtBytes(bad({ numel: 4, offset: 1, shape: [1, 3], stride: [0, 1] }), 'v.pt').stateDict.get('w')!;
    assert.deepEqual(ok.shape, [1, 3]);
    assert.equal(ok.data.length, 3);
  });

  it('honours a big-endian byteorder record', () => {
    const pkl = encodeStateDictPickle([{ name: 'w', key: '0', dtype: 'float32', shape: [2] }]);
    const data = new Uint8Array(8);
    new DataView(data.buffer).setFloat32(0, 1.5, false);
    new DataView(data.buffer).setFloat32(4, -2, false);
    const sd = readPtBytes(zipOf({ 'a/data.pkl': pkl, 'a/byteorder': Buffer.from('big'), 'a/data/0': data }), 'be.pt').stateDict;
    assert.deepEqual(Array.from(sd.get('w')!.data as Float32Array), [1.5, -2]);
    assertInputError(() => readPtBytes(zipOf({ 'a/data.pkl': pkl, 'a/byteorder': Buffer.from('middle'), 'a/data/0': data }), 'x.pt'), /unknown byteorder/);
  });

  it('one storage listed many times cannot amplify memory without bound', () => {
    // 2000 tensors, each the whole 1M-element storage: 8 GB if materialised.
    const entries = Array.from({ length: 2000 }, (_, i) => ({ name: `t${i}`, key: '0', dtype: 'float32', shape: [1 << 20] }));
    const file = zipOf({ 'a/data.pkl': encodeStateDictPickle(entries), 'a/data/0': new Uint8Array(4 << 20) });
    assertInputError(() => readPtBytes(file, 'amp.pt'), /view their storages more than 4 times over/);
  });

  it('a zip directory claiming more entries than the file can hold is refused at once', () => {
    const buf = Uint8Array.from(fs.readFileSync(fixture('tiny.pt')));
    const dv = new DataView(buf.buffer);
    let e = buf.length - 22;
    while (dv.getUint32(e, true) !== 0x06054b50) e--;
    if (e >= 20 && dv.getUint32(e - 20, true) === 0x07064b50) dv.setUint32(dv.getUint32(e - 12, true) + 32, 0xfffffff0, true);
    dv.setUint16(e + 10, 0xfff0, true);
    const t0 = Date.now();
    assertInputError(() => readPtBytes(buf, 'many.pt'), /directory claims \d+ entries/);
    assert.ok(Date.now() - t0 < 1000);
  });
});

describe('PyTorch .pt writer', () => {
  const exp = expected();

  it('round-trips through readPt exactly, atomically, with 64-byte aligned records', () => {
    const dir = tmpDir();
    const src = fixture('tiny.pt');
    const before = sha256(src);
    const sd = readPt(src);
    const out = path.join(dir, 'out.pt');
    fs.writeFileSync(out, 'old contents');
    writePt(sd, out);
    assert.deepEqual(fs.readdirSync(dir), ['out.pt'], 'no temp file left behind');
    assertStateDict(readPt(out), exp.tiny);
    assert.equal(sha256(src), before);
    const offs = recordOffsets(fs.readFileSync(out));
    assert.ok(offs.has('out/data.pkl') && offs.has('out/version') && offs.has('out/byteorder'));
    for (const [name, off] of offs) assert.equal(off % 64, 0, `${name} at ${off}`);
    fs.rmSync(dir, { recursive: true });
  });

  it('writes only opcodes and globals the restricted readers accept; sizes past 2^31 use LONG1', () => {
    const pkl = encodeStateDictPickle([{ name: 'huge', key: '0', dtype: 'float32', shape: [3, 1_000_000_000] }]);
    const v = unpickle(pkl) as PyDict;
    const t = v.map.get('huge') as TensorRef;
    assert.deepEqual(t.shape, [3, 1_000_000_000]);
    assert.deepEqual(t.stride, [1_000_000_000, 1]);
    assert.equal(t.storage.numel, 3_000_000_000);
  });

  it('accepts the model code\'s state_dicts and refuses dtypes it cannot write', () => {
    const sd = new Map([['x', { shape: [2], dtype: 'float32' as string, data: new Float32Array([1, 2]) }]]);
    assert.ok(encodePt(sd).length > 0);
    assert.throws(() => encodePt(new Map([['x', { shape: [1], dtype: 'complex64', data: new Float32Array(1) }]])), /cannot write dtype complex64/);
    assert.throws(() => encodePt(new Map([['x', { shape: [3], dtype: 'float32', data: new Float32Array(1) }]])), /1 values for shape \[3\]/);
  });

  it('PyTorch loads the written file with torch.load(weights_only=True) and gets the same values', function () {
    if (!hasTorch()) {
      console.log('      (skipped: /usr/bin/python3 has no torch; install python3-torch to check PyTorch compatibility)');
      this.skip();
    }
    const dir = tmpDir();
    const out = path.join(dir, 'from-ts.pt');
    writePt(readPt(fixture('tiny.pt')) as StateDict, out);
    const json = python(
      [
        'import sys, json, torch',
        'sd = torch.load(sys.argv[1], weights_only=True)',
        'def vals(t):',
        '    v = t.flatten().tolist()',
        '    if t.dtype == torch.int64: return [str(x) for x in v]',
        '    if t.dtype == torch.bool: return [1 if x else 0 for x in v]',
        '    return [float(x) for x in v] if t.is_floating_point() else v',
        'print(json.dumps({k: {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "values": vals(t)} for k, t in sd.items()}))',
      ].join('\n'),
      [out],
    );
    const got = JSON.parse(json) as Record<string, { dtype: string; shape: number[]; values: unknown[] }>;
    assert.deepEqual(Object.keys(got), Object.keys(exp.tiny));
    for (const [k, e] of Object.entries(exp.tiny)) {
      assert.equal(got[k].dtype, e.dtype, k);
      assert.deepEqual(got[k].shape, e.shape, k);
      assert.deepEqual(got[k].values, e.values, k);
    }
    fs.rmSync(dir, { recursive: true });
  });
});
