/**
 * Checks a job makes before it computes anything, and the shape of the errors a cell reports (issue 8, points 3
 * and 6): non-finite weights, a model whose outputs do not match the data's classes, inputs beyond the size
 * limits, and out-of-memory errors inside a cell.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import { InputError, oneLine } from '../errors';

/** The first parameter or buffer holding NaN or +-Inf: its state_dict key, how many such values, the first. */
export interface NonFinite {
  name: string;
  count: number;
  /** Index of the first one in the PyTorch layout of the tensor (as `tensor[i, j, ...]` in PyTorch). */
  at: number[];
  value: number;
}

export async function findNonFinite(model: Model): Promise<NonFinite | undefined> {
  // The state_dict (PyTorch layout) rather than the variables: names and indices as the user's tools show them.
  for (const [name, t] of await model.stateDict()) {
    const d = t.data;
    if (!(d instanceof Float32Array) && !(d instanceof Float64Array)) continue;
    let count = 0;
    let first = -1;
    for (let i = 0; i < d.length; i++) {
      if (!Number.isFinite(d[i])) {
        if (first < 0) first = i;
        count++;
      }
    }
    if (count) {
      const at: number[] = [];
      let rest = first;
      for (let k = t.shape.length - 1; k >= 0; k--) {
        at.unshift(rest % t.shape[k]);
        rest = Math.floor(rest / t.shape[k]);
      }
      return { name, count, at, value: d[first] };
    }
  }
  return undefined;
}

export function describeNonFinite(f: NonFinite): string {
  return `${f.name} holds ${f.count} non-finite value${f.count === 1 ? '' : 's'} (${f.value} at [${f.at.join(', ')}])`;
}

/** NaN or Inf in the victim's weights: refused before anything runs, naming the tensor. */
export async function checkFiniteWeights(model: Model, where: string): Promise<void> {
  const f = await findNonFinite(model);
  if (f) throw new InputError(`the model's weight ${describeNonFinite(f)}: the checkpoint is corrupt or its training diverged`, where);
}

/**
 * The data's classes must be the model's outputs: labels beyond them are refused by the loaders, and a model
 * with more outputs than the test set has classes (max label + 1) would be scored on classes it never sees.
 */
export function checkClasses(set: ImageSet, numClasses: number, field: string): void {
  let max = -1;
  for (let i = 0; i < set.n; i++) if (set.y[i] > max) max = set.y[i];
  const k = max + 1;
  if (k !== numClasses) {
    throw new InputError(`the model has ${numClasses} output${numClasses === 1 ? '' : 's'} but the data has ${k} class${k === 1 ? '' : 'es'} (labels 0..${max}): the model and the data do not belong together`, field);
  }
}

// ---- Size limits

export interface Limits {
  /** Largest model file (with a TensorFlow.js model's weight files), MB; 0 = no limit. */
  maxModelMB?: number;
  /** Largest data source on disk (a file, or every file of a folder, with its labels file), MB; 0 = no limit. */
  maxDataMB?: number;
}

export const DEFAULT_LIMITS: Required<Limits> = { maxModelMB: 2048, maxDataMB: 4096 };

const MB = 1024 * 1024;

/** Bytes of a file, or of every file under a folder (links are not followed into other folders). */
export function bytesOnDisk(p: string, budget = Infinity): number {
  const st = fs.statSync(p);
  if (!st.isDirectory()) return st.size;
  let total = 0;
  const stack = [p];
  while (stack.length) {
    const dir = stack.pop()!;
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const f = path.join(dir, e.name);
      if (e.isDirectory()) stack.push(f);
      else if (e.isFile() || e.isSymbolicLink()) {
        try {
          const s = fs.statSync(f);
          if (s.isFile()) total += s.size;
        } catch {
          // a dangling link: the loader reports it
        }
      }
      // Past the limit already: the exact total does not matter.
      if (total > budget) return total;
    }
  }
  return total;
}

/** Bytes of a model: the file, plus the weight files a TensorFlow.js model.json names. */
export function modelBytes(file: string, limitBytes: number): number {
  let total = fs.statSync(file).size;
  if (path.basename(file).toLowerCase().endsWith('.json') && total <= limitBytes) {
    try {
      const json = JSON.parse(fs.readFileSync(file, 'utf8')) as { weightsManifest?: Array<{ paths?: unknown[] }> };
      for (const g of json.weightsManifest ?? []) {
        for (const p of g.paths ?? []) {
          if (typeof p !== 'string') continue;
          try {
            total += fs.statSync(path.resolve(path.dirname(file), p)).size;
          } catch {
            // missing shard: the loader reports it
          }
        }
      }
    } catch {
      // not JSON: the loader reports it
    }
  }
  return total;
}

const fmtMB = (bytes: number) => `${(bytes / MB).toFixed(bytes < 10 * MB ? 2 : 0)} MB`;

function over(what: string, bytes: number, limitMB: number, setting: string, flag: string, where: string): never {
  throw new InputError(`${what} is ${fmtMB(bytes)}, over the limit of ${limitMB} MB (raise it with ${flag} or the setting ${setting}, 0 = no limit)`, where);
}

export function checkModelSize(file: string, limits: Limits, where: string): void {
  const limit = limits.maxModelMB ?? DEFAULT_LIMITS.maxModelMB;
  if (!(limit > 0)) return;
  const bytes = modelBytes(file, limit * MB);
  if (bytes > limit * MB) over('the model', bytes, limit, 'backdoorAudit.limits.maxModelMB', '--max-model-mb', where);
}

export function checkDataSize(files: string[], limits: Limits, where: string): void {
  const limit = limits.maxDataMB ?? DEFAULT_LIMITS.maxDataMB;
  if (!(limit > 0)) return;
  let bytes = 0;
  for (const f of files) bytes += bytesOnDisk(f, limit * MB - bytes);
  if (bytes > limit * MB) over('the data set', bytes, limit, 'backdoorAudit.limits.maxDataMB', '--max-data-mb', where);
}

// ---- Errors inside a cell

/**
 * Out of memory as JavaScript and the wasm backend report it: a typed array or ArrayBuffer that cannot be
 * allocated, or WebAssembly memory that cannot grow.
 */
export function isOutOfMemory(e: unknown): boolean {
  const msg = e instanceof Error ? e.message : String(e);
  if (e instanceof RangeError && /allocation failed|Invalid typed array length|Invalid array buffer length|Array buffer allocation|out of memory/i.test(msg)) return true;
  return /\bOOM\b|out of memory|Cannot enlarge memory|WebAssembly\.Memory\(\): could not allocate|failed to grow memory/i.test(msg);
}

/** A cell's row error: one line; out of memory says so and what to lower. */
export function cellError(e: unknown): string {
  const line = oneLine(e);
  if (isOutOfMemory(e)) return `out of memory (${line}): lower the defense's batchSize, the auxiliary set's size or the number of workers`;
  return line;
}
