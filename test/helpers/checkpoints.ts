/** Shared bits of the checkpoint I/O tests: fixture paths, expected values, hashing, torch availability. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { strict as assert } from 'node:assert';
import { InputError } from '../../src/engine/errors';
import type { StateDict } from '../../src/engine/formats/state_dict';
import { tempDir } from './temp';

export const FIXTURES = path.join(__dirname, '..', 'fixtures');
export const fixture = (name: string): string => path.join(FIXTURES, name);

export interface ExpectedTensor {
  dtype: string;
  shape: number[];
  values: Array<number | string>;
  sum: number;
}
export interface Expected {
  tiny: Record<string, ExpectedTensor>;
  small: Record<string, ExpectedTensor>;
  markers: Record<string, string>;
}
export const expected = (): Expected => JSON.parse(fs.readFileSync(fixture('expected.json'), 'utf8')) as Expected;

export const sha256 = (file: string): string => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

export function tmpDir(): string {
  return tempDir('bda-io-');
}

/** Assert a state_dict equals the fixture's expected values exactly (every value, dtype and shape, in order). */
export function assertStateDict(sd: StateDict, exp: Record<string, ExpectedTensor>): void {
  assert.deepEqual([...sd.keys()], Object.keys(exp));
  for (const [name, e] of Object.entries(exp)) {
    const t = sd.get(name)!;
    assert.equal(t.dtype, e.dtype, name);
    assert.deepEqual(t.shape, e.shape, name);
    const got = Array.from(t.data as ArrayLike<number | bigint>, (v) => (typeof v === 'bigint' ? v.toString() : v));
    assert.deepEqual(got, e.values, name);
  }
}

/** Expect an InputError whose message matches; returns it. */
export function assertInputError(fn: () => unknown, message: RegExp, where?: string): InputError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof InputError, `expected InputError, got ${caught instanceof Error ? `${caught.name}: ${caught.message}` : String(caught)}`);
  assert.match(caught.message, message);
  if (where !== undefined) assert.equal(caught.where, where);
  return caught;
}

const PY = '/usr/bin/python3';
let torchOk: boolean | undefined;
/** Whether the system Python has torch (Debian python3-torch); cached. */
export function hasTorch(): boolean {
  if (torchOk === undefined) {
    const r = spawnSync(PY, ['-c', 'import torch'], { encoding: 'utf8', timeout: 60000 });
    torchOk = r.status === 0;
  }
  return torchOk;
}

/** Run a Python snippet with argv; returns stdout, throws with stderr on failure. */
export function python(code: string, args: string[]): string {
  const r = spawnSync(PY, ['-c', code, ...args], { encoding: 'utf8', timeout: 120000 });
  if (r.status !== 0) throw new Error(`python failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}
