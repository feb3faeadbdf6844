import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  readSafetensorsMetadata,
  writeSafetensors,
} from '../../src/engine/formats/safetensors';
import { readPt } from '../../src/engine/formats/pt';
import { InputError } from '../../src/engine/errors';
import { floatToBf16, floatToHalf, halfToFloat, bf16ToFloat, toFloat32 } from '../../src/engine/formats/state_dict';
import { assertInputError, assertStateDict, expected, fixture, hasTorch, python, sha256, tmpDir } from '../helpers/checkpoints';

/** A safetensors file from a header object and a data length (bytes are zero). */
function build(header: unknown, dataLen: number, lenOverride?: bigint): Uint8Array {
  const h = Buffer.from(JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + dataLen);
  new DataView(out.buffer).setBigUint64(0, lenOverride ?? BigInt(h.length), true);
  out.set(h, 8);
  return out;
}

describe('safetensors', () => {
  const exp = expected();

  it('reads the fixture written by Python exactly (all dtypes) with its metadata, leaving it unchanged', () => {
    const f = fixture('tiny.safetensors');
    const before = sha256(f);
    assertStateDict(readSafetensors(f), exp.tiny);
    assert.deepEqual(readSafetensorsMetadata(f), { format: 'pt', source: 'make-fixtures.py' });
    assert.equal(sha256(f), before);
  });

  it('the .pt and .safetensors fixtures hold the same tensors', () => {
    const a = readPt(fixture('tiny.pt'));
    const b = readSafetensors(fixture('tiny.safetensors'));
    for (const [k, t] of a) assert.deepEqual(Array.from(toFloat32(t)), Array.from(toFloat32(b.get(k)!)), k);
  });

  it('round-trips exactly, writing atomically over an existing file', () => {
    const dir = tmpDir();
    const out = path.join(dir, 'm.safetensors');
    fs.writeFileSync(out, 'old');
    writeSafetensors(readSafetensors(fixture('tiny.safetensors')), out, { arch: 'x' });
    assert.deepEqual(fs.readdirSync(dir), ['m.safetensors']);
    assertStateDict(readSafetensors(out), exp.tiny);
    assert.deepEqual(readSafetensorsMetadata(out), { arch: 'x' });
    const buf = fs.readFileSync(out);
    assert.equal(Number(buf.readBigUInt64LE(0)) % 8, 0, 'data 8-byte aligned');
    fs.rmSync(dir, { recursive: true });
  });

  it('PyTorch reads the written file (header parsed by hand, values via torch.frombuffer)', function () {
    if (!hasTorch()) {
      console.log('      (skipped: /usr/bin/python3 has no torch)');
      this.skip();
    }
    const dir = tmpDir();
    const out = path.join(dir, 'm.safetensors');
    writeSafetensors(readSafetensors(fixture('tiny.safetensors')), out);
    const got = JSON.parse(
      python(
        [
          'import sys, json, struct, torch',
          'b = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8+n])',
          'dt = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}',
          'out = {}',
          'for k, e in h.items():',
          '    if k == "__metadata__": continue',
          '    s, t = e["data_offsets"]; raw = bytearray(b[8+n+s:8+n+t])',
          '    x = torch.frombuffer(raw, dtype=dt[e["dtype"]]) if raw else torch.zeros(0, dtype=dt[e["dtype"]])',
          '    out[k] = float(x.double().sum())',
          'print(json.dumps(out))',
        ].join('\n'),
        [out],
      ),
    ) as Record<string, number>;
    for (const [k, e] of Object.entries(exp.tiny)) assert.equal(got[k], e.sum, k);
    fs.rmSync(dir, { recursive: true });
  });

  it('a header length larger than the file is refused without allocating', () => {
    const f = path.join(tmpDir(), 'lie.safetensors');
    fs.writeFileSync(f, build({}, 0, 1n << 62n));
    const mem0 = process.memoryUsage().arrayBuffers;
    assertInputError(() => readSafetensors(f), /header length 4611686018427387904 does not fit the file \(10 bytes\)/, f);
    assertInputError(() => readSafetensorsMetadata(f), /does not fit the file/, f);
    assert.ok(process.memoryUsage().arrayBuffers - mem0 < 16 << 20);
    assertInputError(() => decodeSafetensors(build({}, 0, 0xffffffffffffffffn), 'x'), /does not fit/);
  });

  it('offsets are checked against the file and against each other', () => {
    const t = (o: [number, number], shape = [2]): unknown => ({ dtype: 'F32', shape, data_offsets: o });
    assertInputError(() => decodeSafetensors(build({ a: t([0, 8]) }, 4), 'x'), /lies outside the file's 4 data bytes/);
    assertInputError(() => decodeSafetensors(build({ a: t([0, 8]), b: t([4, 12]) }, 12), 'x'), /overlaps another tensor/);
    assertInputError(() => decodeSafetensors(build({ a: t([8, 16]) }, 16), 'x'), /gap before a/);
    assertInputError(() => decodeSafetensors(build({ a: t([0, 8]) }, 12), 'x'), /4 bytes after its last tensor/);
    assertInputError(() => decodeSafetensors(build({ a: t([0, 12]) }, 12), 'x'), /is 12 bytes, its shape \[2\] of float32 needs 8/);
    assertInputError(() => decodeSafetensors(build({ a: t([4, 0]) }, 8), 'x'), /lies outside/);
    assertInputError(() => decodeSafetensors(build({ a: t([-8, 0]) }, 8), 'x'), /lies outside/);
    assertInputError(() => decodeSafetensors(build({ a: t([0, 1e300]) }, 8), 'x'), /bad data_offsets/);
    assertInputError(() => decodeSafetensors(build({ a: t([0, 8], [2 ** 40, 2 ** 40]) }, 8), 'x'), /bad shape/);
    assertInputError(() => decodeSafetensors(build({ a: t([0, 8], [-2]) }, 8), 'x'), /bad shape/);
    assertInputError(() => decodeSafetensors(build({ a: { dtype: 'F8_E4M3', shape: [1], data_offsets: [0, 1] } }, 1), 'x'), /unsupported safetensors dtype "F8_E4M3"/);
    assertInputError(() => decodeSafetensors(build([1, 2], 0), 'x'), /not a JSON object/);
    assertInputError(() => decodeSafetensors(build({ __metadata__: { a: 1 } }, 0), 'x'), /metadata a is not a string/);
    // Empty tensors take no bytes and may sit anywhere in the order.
    const ok = decodeSafetensors(build({ e: t([0, 0], [0]), a: t([0, 8]) }, 8), 'x');
    assert.deepEqual([...ok.stateDict.keys()], ['e', 'a']);
  });

  it('every truncation and random corruption is an InputError or a well-formed result', () => {
    const buf = fs.readFileSync(fixture('tiny.safetensors'));
    for (let k = 0; k < buf.length; k += 3) assert.throws(() => decodeSafetensors(buf.subarray(0, k), 't'), InputError, `prefix ${k}`);
    let seed = 5;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    for (let trial = 0; trial < 1500; trial++) {
      const b = Uint8Array.from(buf);
      for (let f = 0; f < 1 + Math.floor(rnd() * 3); f++) b[Math.floor(rnd() * Math.min(b.length, 300))] = Math.floor(rnd() * 256);
      try {
        decodeSafetensors(b, 'c');
      } catch (e) {
        if (!(e instanceof InputError)) throw new Error(`trial ${trial}: ${(e as Error).stack}`);
      }
    }
  });

  it('half and bfloat16 conversions are exact for representable values and round to nearest even', () => {
    for (let h = 0; h < 0x10000; h++) {
      const v = halfToFloat(h);
      if (Number.isNaN(v)) assert.ok(Number.isNaN(halfToFloat(floatToHalf(v))));
      else assert.equal(floatToHalf(v), h === 0x8000 ? 0x8000 : h, `half ${h.toString(16)}`);
      const b = bf16ToFloat(h);
      if (Number.isNaN(b)) assert.ok(Number.isNaN(bf16ToFloat(floatToBf16(b))));
      else assert.equal(floatToBf16(b), h, `bf16 ${h.toString(16)}`);
    }
    assert.equal(halfToFloat(floatToHalf(1 + 2 ** -11)), 1); // tie -> even
    assert.equal(halfToFloat(floatToHalf(1 + 3 * 2 ** -11)), 1 + 2 ** -9);
    assert.equal(halfToFloat(floatToHalf(70000)), Infinity);
  });

  it('writing refuses what safetensors cannot hold', () => {
    assert.throws(() => encodeSafetensors(new Map([['x', { shape: [1], dtype: 'complex64', data: new Float32Array(1) }]])), /cannot write dtype complex64/);
    assert.throws(() => encodeSafetensors(new Map([['__metadata__', { shape: [1], dtype: 'float32', data: new Float32Array(1) }]])), /__metadata__/);
  });
});
