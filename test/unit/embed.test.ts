/**
 * The embeddings: GradientOnlyTsne (the library's t-SNE without its per-iteration cost) moves the points
 * exactly as the library's own step does, to the bit; tsne2d is reproducible for a seed and stops on cancel;
 * embedAuxSet's features through ONNX Runtime give the points the backend's features give.
 */
import { strict as assert } from 'node:assert';
import { TSNE } from '@keckelt/tsne';
import { GradientOnlyTsne, tsne2d } from '../../src/engine/embed/tsne';
import { Rng } from '../../src/engine/util/rng';
import { CancelledError } from '../../src/engine/errors';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import { embedAuxSet } from '../../src/engine/embed';
import { ortTrainWanted } from '../../src/engine/nn/ort_train';
import type { ImageSet } from '../../src/engine/data/dataset';

/** Points in three clusters of 40, in 16 dimensions. */
function clusters(rng: Rng): number[][] {
  return Array.from({ length: 120 }, (_, i) => Array.from({ length: 16 }, (_, d) => (d === i % 3 ? 5 : 0) + rng.normal()));
}

describe('embeddings', () => {
  it("GradientOnlyTsne gives the library's embedding to the bit (300 iterations, past the early exaggeration)", () => {
    const data = clusters(new Rng(3));
    const make = (T: typeof TSNE) => {
      const t = new T({ perplexity: 20, dim: 2, epsilon: 10 });
      const rng = new Rng(9);
      (t as unknown as { gaussRandom: () => number }).gaussRandom = () => rng.normal();
      t.initDataRaw(data);
      for (let i = 0; i < 300; i++) t.step();
      return (t.getSolution() as number[][]).flat();
    };
    const ours = make(GradientOnlyTsne);
    const library = make(TSNE);
    assert.equal(ours.length, 240);
    assert.deepEqual(ours, library);
    // The clusters come apart (the projection did something).
    assert.ok(Math.max(...ours) - Math.min(...ours) > 5);
  });

  it('tsne2d: the same points for the same seed; a cancelled signal stops it', async () => {
    const rows = Float32Array.from(clusters(new Rng(4)).flat());
    const a = await tsne2d(rows, 120, 16, { seed: 1, iterations: 50 });
    const b = await tsne2d(rows, 120, 16, { seed: 1, iterations: 50 });
    assert.deepEqual(a, b);
    const abort = new AbortController();
    abort.abort();
    await assert.rejects(tsne2d(rows, 120, 16, { seed: 1, signal: abort.signal }), CancelledError);
  });

  it("embedAuxSet: the features through ONNX Runtime give the backend path's points", async function () {
    await useWasm();
    if (!ortTrainWanted()) this.skip();
    const tensors = tf.memory().numTensors;
    const victim = buildModel({ arch: 'preact-resnet18', inputShape: [16, 16, 1], numClasses: 10, options: { width: 4 } }, { mean: [0.3], std: [0.3] }, 2);
    const rng = new Rng(5);
    const set = (n: number): ImageSet => ({ n, shape: [16, 16, 1], x: Float32Array.from({ length: n * 256 }, () => rng.uniform(0, 1)), y: Int32Array.from({ length: n }, (_, i) => i % 10), numClasses: 10 });
    const input = { aux: 'a', reference: set(60), raw: set(60), points: 90, seed: 3 };
    try {
      const ort = await embedAuxSet(victim, input);
      process.env.BACKDOOR_AUDIT_ORT_TRAIN = '0';
      const backend = await embedAuxSet(victim, input);
      assert.equal(ort.points.length, 90);
      assert.deepEqual(ort.points.map((p) => [p.label, p.set]), backend.points.map((p) => [p.label, p.set]));
      // The same projection of features equal to float32 rounding: the same points to the rounding of the output.
      const far = ort.points.filter((p, i) => Math.abs(p.x - backend.points[i].x) > 0.01 || Math.abs(p.y - backend.points[i].y) > 0.01);
      assert.equal(far.length, 0, `${far.length} points moved`);
    } finally {
      delete process.env.BACKDOOR_AUDIT_ORT_TRAIN;
      victim.dispose();
    }
    assert.equal(tf.memory().numTensors, tensors, 'tensors leaked');
  });
});
