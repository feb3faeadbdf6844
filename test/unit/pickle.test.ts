import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { unzipSync } from 'fflate';
import { PyDict, PyGlobal, PySet, PyTuple, StorageRef, TensorRef, unpickle, type PyValue } from '../../src/engine/formats/pickle';
import { InputError } from '../../src/engine/errors';
import { assertInputError, expected, fixture, python, sha256 } from '../helpers/checkpoints';

/** Python-ish plain JS view of a parsed value, for comparisons. */
function plain(v: PyValue): unknown {
  if (v instanceof PyTuple) return { tuple: v.items.map(plain) };
  if (Array.isArray(v)) return v.map(plain);
  if (v instanceof PyDict) return { [v.ordered ? 'odict' : 'dict']: [...v.map].map(([k, x]) => [plain(k), plain(x)]) };
  if (v instanceof PySet) return { set: v.items.map(plain) };
  if (v instanceof Uint8Array) return { bytes: Array.from(v) };
  if (typeof v === 'bigint') return { big: v.toString() };
  return v;
}

const dataPkl = (file: string): Uint8Array => {
  const files = unzipSync(fs.readFileSync(file));
  const name = Object.keys(files).find((n) => n.endsWith('/data.pkl'))!;
  return files[name];
};

const bytes = (...parts: Array<string | number[]>): Uint8Array =>
  Uint8Array.from(parts.flatMap((p) => (typeof p === 'string' ? Array.from(Buffer.from(p, 'latin1')) : p)));

describe('restricted pickle reader', () => {
  for (const proto of [2, 4]) {
    it(`reads plain containers written by Python (protocol ${proto})`, () => {
      const v = unpickle(fs.readFileSync(fixture(`containers_p${proto}.pkl`)), { where: 'c.pkl' });
      assert.ok(v instanceof PyDict);
      const m = new Map([...v.map].map(([k, x]) => [k, plain(x)]));
      assert.equal(m.get('none'), null);
      assert.equal(m.get('true'), true);
      assert.equal(m.get('false'), false);
      assert.equal(m.get('int'), 7);
      assert.equal(m.get('neg'), -300);
      assert.equal(m.get('i32'), 2 ** 31 - 1);
      assert.deepEqual(m.get('big'), { big: (2n ** 70n).toString() });
      assert.deepEqual(m.get('negbig'), { big: (-(2n ** 63n)).toString() });
      assert.equal(m.get('float'), 1.5);
      assert.equal(m.get('str'), 'héllo');
      assert.deepEqual(m.get('bytes'), { bytes: [0, 1, 255] });
      assert.deepEqual(m.get('list'), [1, [2, 3], 'x']);
      assert.deepEqual(m.get('tuple'), { tuple: [1, 'two', 3.0] });
      assert.deepEqual(m.get('empty_tuple'), { tuple: [] });
      assert.deepEqual(m.get('dict'), { dict: [['a', 1], [2, 'b']] });
      assert.deepEqual(m.get('set'), { set: [5] });
      assert.deepEqual(m.get('ordered'), { odict: [['z', 1], ['y', 2]] });
      // The memo makes both entries one object, as in Python.
      const shared = v.map.get('shared') as PyValue[];
      assert.equal(shared[0], shared[1]);
    });
  }

  it('reads a torch data.pkl into tensor references without touching the storages', () => {
    const v = unpickle(dataPkl(fixture('tiny.pt')), { where: 'tiny.pt' });
    assert.ok(v instanceof PyDict && v.ordered);
    const t = v.map.get('linear.weight');
    assert.ok(t instanceof TensorRef);
    assert.deepEqual(t.shape, [2, 5]);
    assert.deepEqual(t.stride, [1, 2]); // the transpose torch saved
    assert.ok(t.storage instanceof StorageRef);
    assert.equal(t.storage.dtype, 'float32');
    const s = v.map.get('shared.slice') as TensorRef;
    assert.equal(s.offset, 5);
    assert.equal(s.storage.key, (v.map.get('shared.full') as TensorRef).storage.key);
  });

  it("keeps a module state_dict's _metadata (set by BUILD) as an attribute, not as entries", () => {
    const v = unpickle(dataPkl(fixture('module_sd.pt')), { where: 'module_sd.pt' });
    assert.ok(v instanceof PyDict);
    assert.ok([...v.map.keys()].every((k) => typeof k === 'string' && !k.startsWith('_metadata')));
    const meta = v.attrs.get('_metadata');
    assert.ok(meta instanceof PyDict && meta.map.has('1'), 'BatchNorm entry of _metadata');
  });

  describe('refuses code execution, naming the global, and runs nothing', () => {
    const markers = expected().markers;
    const cases: Array<[string, RegExp, string]> = [
      ['mal_system.pt', /^refusing to load posix\.system\b/, markers.system],
      ['mal_eval.pt', /^refusing to load builtins\.eval\b/, markers.eval],
      ['mal_popen.pt', /^refusing to load subprocess\.Popen\b/, markers.popen],
      ['mal_stack_global.pt', /^refusing to load os\.system\b/, markers.stack_global],
      ['mal_inst.pt', /^refusing to load os\.system\b/, markers.inst],
      ['mal_hidden.pt', /^refusing to load posix\.system\b/, markers.hidden],
    ];
    for (const [file, msg, marker] of cases) {
      it(file, () => {
        fs.rmSync(marker, { force: true });
        const before = sha256(fixture(file));
        assertInputError(() => unpickle(dataPkl(fixture(file)), { where: file }), msg, file);
        assert.equal(fs.existsSync(marker), false, `payload ran: ${marker} exists`);
        assert.equal(sha256(fixture(file)), before);
      });
    }

    it('control: the same payloads do run under a normal unpickler (so the checks above are not vacuous)', function () {
      // Python's own pickle.loads on our fixture: the payload is only `touch <marker>` / open(marker, 'w').
      if (!fs.existsSync('/usr/bin/python3')) this.skip();
      for (const [file, marker] of [
        ['mal_system.pt', markers.system],
        ['mal_eval.pt', markers.eval],
      ]) {
        fs.rmSync(marker, { force: true });
        python('import sys, zipfile, pickle; pickle.loads(zipfile.ZipFile(sys.argv[1]).read("archive/data.pkl"))', [fixture(file)]);
        assert.equal(fs.existsSync(marker), true, `${file} payload should have created ${marker} under pickle.loads`);
        fs.rmSync(marker, { force: true });
      }
    });

    it('numpy number scalars (the numpy.int64 keys of a BackdoorBench record) are read as data, nothing else', () => {
      // scalar(dtype('<i8' / '>i4' / '<f8'), raw bytes), as numpy pickles them, with the dtype built first.
      const dtype = (t: string, order: string) => `cnumpy\ndtype\nX${String.fromCharCode(t.length)}\x00\x00\x00${t}\x89\x88\x87R(K\x03X\x01\x00\x00\x00${order}NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb`;
      const scalar = (mod: string, t: string, order: string, raw: number[]) => bytes([0x80, 3], `c${mod}\nscalar\n${dtype(t, order)}C${String.fromCharCode(raw.length)}`, raw, '\x86R.');
      assert.equal(unpickle(scalar('numpy.core.multiarray', 'i8', '<', [205, 0, 0, 0, 0, 0, 0, 0])), 205);
      assert.equal(unpickle(scalar('numpy._core.multiarray', 'i4', '>', [0xff, 0xff, 0xff, 0xfe])), -2);
      assert.equal(unpickle(scalar('numpy.core.multiarray', 'f8', '<', [...Buffer.from(new Float64Array([0.25]).buffer)])), 0.25);
      assert.deepEqual(plain(unpickle(scalar('numpy.core.multiarray', 'u8', '<', [0, 0, 0, 0, 0, 0, 0, 0x80]))), { big: (2n ** 63n).toString() });
      assertInputError(() => unpickle(scalar('numpy.core.multiarray', 'i8', '<', [1, 2, 3])), /numpy i8 scalar of 3 bytes/);
      // An object scalar (dtype 'O' wraps any object) is refused at its dtype; a scalar needs a built dtype.
      assertInputError(() => unpickle(scalar('numpy.core.multiarray', 'O8', '|', [0, 0, 0, 0, 0, 0, 0, 0])), /numpy dtype O8 is not a plain number type/);
      assertInputError(() => unpickle(bytes([0x80, 3], 'cnumpy.core.multiarray\nscalar\nK\x01C\x01\x00\x86R.')), /numpy scalar without a dtype/);
    });

    it('an allowed global that is not callable (a storage class) cannot be REDUCEd', () => {
      assertInputError(() => unpickle(dataPkl(fixture('mal_call_storage.pt')), { where: 'x' }), /refusing to call torch\.FloatStorage/);
    });

    it('other globals are refused by name; odd names are escaped', () => {
      for (const [mod, name] of [
        ['os', 'system'],
        ['builtins', 'exec'],
        ['builtins', 'getattr'],
        ['__builtin__', 'eval'],
        ['torch', 'load'],
        ['torch._utils', '_rebuild_qtensor'],
        ['copyreg', '_reconstructor'],
        ['numpy.core.multiarray', 'frombuffer'],
        ['collections', 'defaultdict'],
      ]) {
        assertInputError(() => unpickle(bytes([0x80, 2], `c${mod}\n${name}\n`, ')R.')), new RegExp(`^refusing to load ${mod.replace(/\./g, '\\.')}\\.${name}\\b`));
      }
      const e = assertInputError(() => unpickle(bytes([0x80, 2], 'cos\nsys\x1btem\n).')), /refusing to load os\."sys\\u001btem"/);
      assert.ok(!e.message.includes('\x1b'));
    });

    it('refuses REDUCE on non-functions, NEWOBJ of classes, BUILD on non-dicts, non-storage persistent ids', () => {
      assertInputError(() => unpickle(bytes([0x80, 2], 'K\x01)R.')), /REDUCE on something that is not a function/);
      assertInputError(() => unpickle(bytes([0x80, 2], 'ctorch\nSize\n)\x81.')), /NEWOBJ of an unsupported class/);
      assertInputError(() => unpickle(bytes([0x80, 2], ']}b.')), /BUILD on something that is not a dict/);
      assertInputError(() => unpickle(bytes([0x80, 2], '(X\x04\x00\x00\x00evilK\x01tQ.')), /only storages may be loaded/);
      assertInputError(() => unpickle(bytes([0x80, 2], 'K\x05Q.')), /persistent id is not a tuple/);
      // A storage key that looks like a path is refused (keys name archive records).
      const pid = '(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x06\x00\x00\x00../../X\x03\x00\x00\x00cpuK\x01tQ.';
      assertInputError(() => unpickle(bytes([0x80, 2], pid)), /bad storage key/);
    });

    it('refuses opcodes a state_dict never needs', () => {
      assertInputError(() => unpickle(bytes([0x80, 2], '(cos\nsystem\no.')), /refusing to load os\.system/); // OBJ after a refused GLOBAL
      assertInputError(() => unpickle(bytes([0x80, 2, 0x82, 1], '.')), /opcode EXT1 is not allowed/);
      assertInputError(() => unpickle(bytes([0x80, 2], 'I1\n.')), /opcode INT is not allowed/);
      assertInputError(() => unpickle(bytes([0x80, 2], 'P1\n.')), /opcode PERSID is not allowed/);
      assertInputError(() => unpickle(bytes([0x80, 2, 0xff])), /unknown opcode 0xff/);
    });
  });

  describe('bounds', () => {
    it('string and bytes lengths beyond the data are refused before allocating', () => {
      assertInputError(() => unpickle(bytes([0x80, 2, 0x58, 0xff, 0xff, 0xff, 0xff], 'abc.')), /length 4294967295 runs past the end/);
      assertInputError(() => unpickle(bytes([0x80, 4, 0x8d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], 'abc.')), /runs past the end/);
      assertInputError(() => unpickle(bytes([0x80, 4, 0x8e, 0, 0, 0, 0, 0, 0, 0, 0x40], '.')), /runs past the end/);
      assertInputError(() => unpickle(bytes([0x80, 3, 0x42, 0xff, 0xff, 0xff, 0x7f], '.')), /runs past the end/);
      assertInputError(() => unpickle(bytes([0x80, 4, 0x95, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 'N.')), /runs past the end/);
      assertInputError(() => unpickle(bytes([0x80, 2, 0x8b, 0x00, 0x00, 0x10, 0x00], '.')), /longer than 1024 bytes/);
    });

    it('stack, mark depth and memo are capped', () => {
      assertInputError(() => unpickle(bytes([0x80, 2], 'N'.repeat(100), '.'), { maxStack: 50 }), /stack deeper than 50/);
      assertInputError(() => unpickle(bytes([0x80, 2], '('.repeat(100), '.'), { maxMarks: 50 }), /MARKs nested deeper than 50/);
      const puts = Array.from({ length: 100 }, (_, i) => [0x71, i]).flat();
      assertInputError(() => unpickle(bytes([0x80, 2, 0x4e], puts, '.'), { maxMemo: 50 }), /memo larger than 50/);
      // DUP cannot grow the stack without bound either (default cap).
      assertInputError(() => unpickle(bytes([0x80, 2, 0x4e], '2'.repeat((1 << 20) + 10), '.')), /stack deeper than/);
    });

    it('malformed streams: underflow, unknown memo keys, missing STOP, bad UTF-8', () => {
      assertInputError(() => unpickle(bytes([0x80, 2], 'R.')), /stack underflow/);
      assertInputError(() => unpickle(bytes([0x80, 2, 0x68, 9], '.')), /memo key 9 was never stored/);
      assertInputError(() => unpickle(bytes([0x80, 2], 'N')), /ends without STOP/);
      assertInputError(() => unpickle(bytes([0x80, 2, 0x8c, 2, 0xc3, 0x28], '.')), /not valid UTF-8/);
      assertInputError(() => unpickle(bytes([0x80, 2], 'cos')), /unterminated/);
      assertInputError(() => unpickle(bytes([0x80, 9], 'N.')), /unknown pickle protocol/);
    });

    it('every truncation and many corruptions of a real data.pkl give InputError, never a crash', () => {
      const pkl = dataPkl(fixture('tiny.pt'));
      for (let k = 0; k < pkl.length; k++) {
        assert.throws(() => unpickle(pkl.subarray(0, k)), InputError, `prefix ${k}`);
      }
      let seed = 12345;
      const rnd = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
      for (let trial = 0; trial < 3000; trial++) {
        const b = pkl.slice();
        const flips = 1 + Math.floor(rnd() * 3);
        for (let f = 0; f < flips; f++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
        try {
          unpickle(b);
        } catch (e) {
          if (!(e instanceof InputError)) throw new Error(`trial ${trial}: ${(e as Error).stack}`);
        }
      }
    });
  });

  it('only emulated globals become values: a GLOBAL result is inert data', () => {
    const v = unpickle(bytes([0x80, 2], 'ctorch\nFloatStorage\n.'));
    assert.ok(v instanceof PyGlobal);
    assert.equal(v.fullName, 'torch.FloatStorage');
  });
});
