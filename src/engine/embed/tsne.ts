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
 * The library's t-SNE with its gradient computed without the cost (which `step` returns and nobody reads here:
 * it took a logarithm of each of the n^2 pairs at every iteration, most of the seconds a projection of 600 points
 * took). For a 2-D embedding (the only one the product makes) the gradient runs on reused typed arrays, on a flat
 * copy of the points with the coordinate loops unrolled: the library's own terms in the same order (0 + a is a),
 * so the embedding is the same to the bit (test/unit/embed.test.ts compares them) at about half the time of
 * loops over arrays of arrays. Other dimensions take the library's own gradient.
 */
export class GradientOnlyTsne extends TSNE {
  private qu = new Float64Array(0);

  private ys = new Float64Array(0);

  costGrad(Y: number[][]): { cost: number; grad: number[][] } {
    if ((this as unknown as { dim: number }).dim !== 2) return super.costGrad(Y);
    const self = this as unknown as { N: number; P: ArrayLike<number>; iter: number };
    const { N, P } = self;
    const pmul = self.iter < 100 ? 4 : 1; // the library's early exaggeration
    if (this.qu.length !== N * N) this.qu = new Float64Array(N * N);
    if (this.ys.length !== 2 * N) this.ys = new Float64Array(2 * N);
    const qu = this.qu;
    const ys = this.ys;
    for (let i = 0; i < N; i++) {
      ys[2 * i] = Y[i][0];
      ys[2 * i + 1] = Y[i][1];
    }
    let qsum = 0.0;
    for (let i = 0; i < N; i++) {
      const xi = ys[2 * i];
      const yi = ys[2 * i + 1];
      for (let j = i + 1; j < N; j++) {
        const dx = xi - ys[2 * j];
        const dy = yi - ys[2 * j + 1];
        const q = 1.0 / (1.0 + (dx * dx + dy * dy));
        qu[i * N + j] = q;
        qu[j * N + i] = q;
        qsum += 2 * q;
      }
    }
    const grad: number[][] = [];
    for (let i = 0; i < N; i++) {
      const xi = ys[2 * i];
      const yi = ys[2 * i + 1];
      let g0 = 0;
      let g1 = 0;
      const row = i * N;
      for (let j = 0; j < N; j++) {
        const q = qu[row + j];
        const premult = 4 * (pmul * P[row + j] - Math.max(q / qsum, 1e-100)) * q;
        g0 += premult * (xi - ys[2 * j]);
        g1 += premult * (yi - ys[2 * j + 1]);
      }
      grad.push([g0, g1]);
    }
    return { cost: NaN, grad };
  }
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
  const t = new GradientOnlyTsne({ perplexity, dim: 2, epsilon: 10 });
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
