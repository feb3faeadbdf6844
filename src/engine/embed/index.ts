/**
 * Feature embeddings for the panel (the paper's Figures 2 and 3): penultimate features phi of reference data
 * (the victim's training or test data), the raw auxiliary set and its calibrated version, projected together
 * to 2-D so that the three clouds share one coordinate system.
 */
import type { ImageSet } from '../data/dataset';
import { imageSize, subset } from '../data/dataset';
import { OrtModelGraph } from '../nn/ort_graph';
import { ortTrainWanted } from '../nn/ort_train';
import type { Model } from '../nn/model';
import { predictFeatures } from '../nn/train';
import type { EmbeddingEntry, EmbeddingPoint } from '../../shared/results';
import { Rng } from '../util/rng';
import { tsne2d } from './tsne';

export interface EmbedInput {
  aux: string;
  reference: ImageSet;
  raw: ImageSet;
  calibrated?: ImageSet;
  /** Total points across the sets. */
  points: number;
  seed: number;
}

export async function embedAuxSet(victim: Model, input: EmbedInput, signal?: AbortSignal): Promise<EmbeddingEntry> {
  const parts: Array<[EmbeddingPoint['set'], ImageSet]> = [
    ['reference', input.reference],
    ['aux', input.raw],
  ];
  if (input.calibrated) parts.push(['calibrated', input.calibrated]);
  const per = Math.max(1, Math.floor(input.points / parts.length));
  const rng = new Rng(input.seed).fork(`embed:${input.aux}`);
  // The raw and calibrated sets are paired image by image: sample the same indices from both.
  const auxIdx = rng.permutation(input.raw.n).slice(0, Math.min(per, input.raw.n));
  const refIdx = rng.permutation(input.reference.n).slice(0, Math.min(per, input.reference.n));
  const chosen = parts.map(([set, data]) => [set, subset(data, set === 'reference' ? refIdx : auxIdx)] as const);

  const feats: Array<{ data: Float32Array; dim: number }> = [];
  // The features through ONNX Runtime where it loads (a forward graph tapping the feature layer): the backend's
  // forward pass of a few hundred images took seconds of this thread.
  const graph = ortTrainWanted() ? await OrtModelGraph.create(victim, { bnTrain: false, loss: 'none', taps: [victim.layout.feature], constantWeights: true }) : undefined;
  try {
    for (const [, s] of chosen) feats.push(graph ? await tappedFeatures(graph, victim.layout.feature, s) : await predictFeatures(victim, s));
  } finally {
    await graph?.close();
  }
  const dim = feats[0].dim;
  const n = chosen.reduce((a, [, s]) => a + s.n, 0);
  const rows = new Float32Array(n * dim);
  let o = 0;
  for (const f of feats) {
    rows.set(f.data, o);
    o += f.data.length;
  }
  const xy = await tsne2d(rows, n, dim, { seed: input.seed, signal });
  const points: EmbeddingPoint[] = [];
  let k = 0;
  for (const [set, s] of chosen) {
    for (let i = 0; i < s.n; i++, k++) points.push({ x: round(xy[k][0]), y: round(xy[k][1]), label: s.y[i], set });
  }
  return { aux: input.aux, method: 'tsne', points };
}

/** The tapped feature of every image of `set`, flattened per image, in batches. */
async function tappedFeatures(graph: OrtModelGraph, tap: string, set: ImageSet, batchSize = 256): Promise<{ data: Float32Array; dim: number }> {
  const size = imageSize(set);
  let data = new Float32Array(0);
  let dim = 0;
  for (let s = 0; s < set.n; s += batchSize) {
    const n = Math.min(batchSize, set.n - s);
    const out = (await graph.run(set.x.slice(s * size, (s + n) * size), n)).taps!.get(tap)!;
    if (!dim) {
      dim = out.shape.slice(1).reduce((a, b) => a * b, 1);
      data = new Float32Array(set.n * dim);
    }
    data.set(out.data, s * dim);
  }
  return { data, dim };
}

function round(v: number): number {
  return Math.round(v * 1000) / 1000;
}
