/** Atomic writes leave either the old file or the new one, never a temp file; output names never clobber. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeFileAtomic, writeJsonAtomic, uniqueOutputPath, ClobberError } from '../../src/engine/util/atomic';

describe('atomic writes and output names', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-atomic-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writes text, bytes and chunks, replacing the old content, with no temp file left behind', () => {
    const f = path.join(dir, 'out.bin');
    writeFileAtomic(f, 'old');
    writeFileAtomic(f, new Uint8Array([1, 2, 3]));
    assert.deepEqual([...fs.readFileSync(f)], [1, 2, 3]);
    writeFileAtomic(f, ['ab', Buffer.from('cd'), new Uint8Array(0), 'e']);
    assert.equal(fs.readFileSync(f, 'utf8'), 'abcde');
    assert.deepEqual(fs.readdirSync(dir), ['out.bin']);
  });

  it('writes JSON with a final newline', () => {
    const f = path.join(dir, 'results.json');
    writeJsonAtomic(f, { a: [1, 2] });
    assert.equal(fs.readFileSync(f, 'utf8'), '{\n  "a": [\n    1,\n    2\n  ]\n}\n');
  });

  it('keeps the existing file intact and removes the temp file when the write fails midway', () => {
    const f = path.join(dir, 'model.safetensors');
    fs.writeFileSync(f, 'the previous model');
    // A producer that fails after part of the data is on disk, as a serializer running out of memory would.
    function* failing() {
      yield Buffer.alloc(1 << 16, 7);
      throw new Error('serializer failed');
    }
    assert.throws(() => writeFileAtomic(f, failing()), /serializer failed/);
    assert.equal(fs.readFileSync(f, 'utf8'), 'the previous model');
    assert.deepEqual(fs.readdirSync(dir), ['model.safetensors']);
  });

  it('keeps the existing file intact when fsync fails', () => {
    const f = path.join(dir, 'results.json');
    fs.writeFileSync(f, '{"old": true}');
    // Patch the module object itself (an `import *` namespace is read-only); atomic.ts reads through to it.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeFs = require('node:fs') as { fsyncSync: typeof fs.fsyncSync };
    const real = nodeFs.fsyncSync;
    nodeFs.fsyncSync = () => {
      throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
    };
    try {
      assert.throws(() => writeJsonAtomic(f, { new: true }), /EIO/);
    } finally {
      nodeFs.fsyncSync = real;
    }
    assert.equal(fs.readFileSync(f, 'utf8'), '{"old": true}');
    assert.deepEqual(fs.readdirSync(dir), ['results.json']);
  });

  it('refuses to overwrite a protected input file, also through a symlink', () => {
    const input = path.join(dir, 'victim.pt');
    fs.writeFileSync(input, 'weights');
    assert.throws(() => writeFileAtomic(input, 'x', { protect: [input] }), ClobberError);
    const link = path.join(dir, 'link.pt');
    fs.symlinkSync(input, link);
    assert.throws(() => writeFileAtomic(link, 'x', { protect: [input] }), /refusing to overwrite an input file/);
    assert.equal(fs.readFileSync(input, 'utf8'), 'weights');
  });

  it('unique output names: base.ext, then base-1.ext, base-2.ext; overwrite reuses an output but never an input', () => {
    const a = uniqueOutputPath(dir, 'ft-heldout', 'safetensors');
    assert.equal(a, path.join(dir, 'ft-heldout.safetensors'));
    assert.ok(fs.existsSync(a), 'the name is reserved by a placeholder');
    assert.equal(uniqueOutputPath(dir, 'ft-heldout', '.safetensors'), path.join(dir, 'ft-heldout-1.safetensors'));
    assert.equal(uniqueOutputPath(dir, 'ft-heldout', 'safetensors', false, { reserve: false }), path.join(dir, 'ft-heldout-2.safetensors'));
    assert.ok(!fs.existsSync(path.join(dir, 'ft-heldout-2.safetensors')), 'reserve: false creates nothing');
    assert.equal(uniqueOutputPath(dir, 'ft-heldout', 'safetensors', true), a);
    // The input model sits in the output folder: even with overwrite it is skipped.
    const input = path.join(dir, 'victim.pt');
    fs.writeFileSync(input, 'weights');
    assert.equal(uniqueOutputPath(dir, 'victim', 'pt', true, { inputs: [input] }), path.join(dir, 'victim-1.pt'));
    assert.equal(fs.readFileSync(input, 'utf8'), 'weights');
    assert.throws(() => uniqueOutputPath(dir, '../escape', 'pt'), /not a plain file name/);
  });

  it('creates the output folder', () => {
    const sub = path.join(dir, 'a', 'b');
    assert.equal(uniqueOutputPath(sub, 'results', 'json', false, { reserve: false }), path.join(sub, 'results.json'));
    assert.ok(fs.statSync(sub).isDirectory());
  });
});
