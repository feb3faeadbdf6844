/**
 * 2-D t-SNE of feature vectors with the `@keckelt/tsne` library (exact t-SNE, fine for the few hundred
 * points a panel shows). Its initial solution draws from Math.random; we give the instance our seeded
 * Gaussian source instead so that embeddings are reproducible for a job's seed.
 */
import { TSNE } from '@keckelt/tsne';
import { Rng } from '../util/rng';
import { throwIfAborted } from '../errors';

export interface TsneOptions {
  perplexity?: number;
  iterations?: number;
  seed?: number;
  /** Checked between iterations: a cancelled job stops here. */
  signal?: AbortSignal;
}

/**
 * rows: n vectors of length dim (row-major). Returns n [x, y] points. Yields to the event loop between
 * iterations and stops there when `signal` is aborted: a projection of 600 points takes seconds, during which
 * the job's main thread must still relay its cell processes' progress and rows, and honour a cancel.
 */
export async function tsne2d(rows: Float32Array, n: number, dim: number, o: TsneOptions = {}): Promise<Array<[number, number]>> {
  if (n === 0) return [];
  if (n < 4) return Array.from({ length: n }, (_, i) => [i, 0] as [number, number]);
  const data: number[][] = [];
  for (let i = 0; i < n; i++) data.push(Array.from(rows.subarray(i * dim, (i + 1) * dim)));
  const perplexity = Math.min(o.perplexity ?? 30, Math.max(2, Math.floor((n - 1) / 3)));
  const t = new TSNE({ perplexity, dim: 2, epsilon: 10 });
  const rng = new Rng(o.seed ?? 0).fork('tsne');
  (t as unknown as { gaussRandom: () => number }).gaussRandom = () => rng.normal();
  t.initDataRaw(data);
  const iterations = o.iterations ?? 500;
  for (let i = 0; i < iterations; i++) {
    t.step();
    await new Promise((r) => setImmediate(r));
    throwIfAborted(o.signal);
  }
  return (t.getSolution() as number[][]).map((p) => [p[0], p[1]]);
}
