/**
 * ANP's iteration against PyTorch's on a victim PyTorch trained: the committed zoo victim (preact8-badnets), its
 * first 64 auxiliary images as one batch, masks and noises as scripts/zoo/make_anp_step_fixture.py drew them,
 * and what one iteration of BackdoorBench's ANP computes from there in PyTorch float64: the signs of the noises'
 * ascent step, the natural and robust losses, the masks' gradient. Ours must agree as closely as PyTorch's own
 * float32 does (recorded in the fixture), through ONNX Runtime (the scaled-BatchNorm graph anp.ts trains with)
 * and on the backend. A noise or mask placed on the wrong BatchNorm term, a sign convention or a loss weight off
 * shows up here as a wrong gradient.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { loadZooFixture, type ZooFixture } from '../helpers/zoo';
import { createBnMasks, maskHook, readMasks } from '../../src/engine/defenses/bn_masks';
import { crossEntropy, makeBatch } from '../../src/engine/nn/train';
import { OrtModelGraph } from '../../src/engine/nn/ort_graph';
import { ortTrainWanted } from '../../src/engine/nn/ort_train';
import { SGD } from '../../src/engine/nn/optim';
import { Rng } from '../../src/engine/util/rng';
import { iterationOnOrt } from '../../src/engine/defenses/anp';

interface AnpStepFixture {
  eps: number;
  alpha: number;
  images: number;
  layers: string[];
  masks: number[][];
  /** Every layer's gamma noise, then every layer's beta noise. */
  noise: number[][];
  /** Signs of d CE / d noise, in `noise`'s order. */
  ascentSigns: number[][];
  natural: number;
  robust: number;
  maskGrads: number[][];
  float32: { signsFlipped: number; maskGradRelErr: number; natural: number; robust: number };
}

interface IterationResult {
  signs: number[][];
  natural: number;
  robust: number;
  maskGrads: Float32Array[];
}

const FIXTURE = path.join(__dirname, '..', 'fixtures', 'zoo', 'preact8-badnets', 'anp-step.json');

/** Hands out the fixture's noises as resetNoise draws them (uniform, element by element, gamma's then beta's). */
class NoiseReplay extends Rng {
  private at = 0;
  constructor(private readonly values: number[]) {
    super(0);
  }
  override uniform(): number {
    if (this.at >= this.values.length) throw new Error('replay: more noise drawn than the fixture holds');
    return this.values[this.at++];
  }
}

describe('ANP iteration parity with PyTorch (zoo: preact8-badnets)', function () {
  this.timeout(300_000);
  let zoo: ZooFixture;
  const ref = JSON.parse(fs.readFileSync(FIXTURE, 'utf8')) as AnpStepFixture;
  const L = ref.layers.length;

  before(async () => {
    await useWasm();
    zoo = await loadZooFixture('preact8-badnets');
  });
  after(() => zoo?.loaded.model.dispose());

  /** Our signs, losses and mask gradient against the fixture's; the step taken on PyTorch's signs. */
  const check = (ours: IterationResult) => {
    const flipped = ours.signs.flat().filter((s, i) => s !== ref.ascentSigns.flat()[i]).length;
    assert.ok(flipped <= Math.max(2, 2 * ref.float32.signsFlipped), `${flipped} ascent signs differ (PyTorch float32: ${ref.float32.signsFlipped})`);
    for (const k of ['natural', 'robust'] as const) {
      const err = Math.abs(ours[k] - ref[k]) / ref[k];
      assert.ok(err <= Math.max(1e-5, 2 * (Math.abs(ref.float32[k] - ref[k]) / ref[k])), `${k} loss ${ours[k]} against ${ref[k]}`);
    }
    let num = 0;
    let den = 0;
    ours.maskGrads.forEach((g, i) => g.forEach((v, j) => ((num += (v - ref.maskGrads[i][j]) ** 2), (den += ref.maskGrads[i][j] ** 2))));
    const rel = Math.sqrt(num / den);
    assert.ok(rel <= 2 * ref.float32.maskGradRelErr, `mask gradient off by ${rel.toExponential(2)} (PyTorch float32: ${ref.float32.maskGradRelErr.toExponential(2)})`);
    return rel;
  };

  it('has the BatchNorm layers of the fixture, in the same order', () => {
    assert.deepEqual(
      zoo.loaded.model.batchNorms().map((b) => b.path),
      ref.layers,
    );
  });

  it('through ONNX Runtime: the ascent signs, both losses and the masks gradient as PyTorch computes them', async function () {
    if (!ortTrainWanted()) this.skip();
    const victim = zoo.loaded.model;
    const bns = victim.batchNorms();
    const graph = await OrtModelGraph.create(victim, { bnTrain: true, loss: 'ce', paramGrads: false, bnScales: true, constantWeights: true }, 1);
    assert.ok(graph, 'the scaled-BatchNorm graph covers this model');
    try {
      const n = ref.images;
      const [h, w, c] = victim.inputShape;
      const x = Float32Array.from(zoo.aux.x.subarray(0, n * h * w * c));
      const labels = Int32Array.from(zoo.aux.y.subarray(0, n));
      let noise = ref.noise.map((r) => [...r]);
      const scales = (perturbed: boolean) =>
        new Map(
          bns.map((b, i) => [
            b.path,
            perturbed
              ? { g: Float32Array.from(ref.masks[i], (m, j) => m + noise[i][j]), b: Float32Array.from(noise[L + i], (v) => 1 + v) }
              : { g: Float32Array.from(ref.masks[i]), b: new Float32Array(ref.masks[i].length).fill(1) },
          ]),
        );
      const ascent = (await graph.run(x, n, { labels, scales: scales(true) })).scaleGrads!;
      const signs = [...bns.map((b) => Array.from(ascent.get(b.path)!.g, Math.sign)), ...bns.map((b) => Array.from(ascent.get(b.path)!.b, Math.sign))];
      noise = noise.map((r, i) => r.map((v, j) => v + ref.eps * ref.ascentSigns[i][j]));
      const natural = await graph.run(x, n, { labels, scales: scales(false) });
      const robust = await graph.run(x, n, { labels, scales: scales(true) });
      const maskGrads = bns.map((b) => {
        const [a, r] = [natural.scaleGrads!.get(b.path)!.g, robust.scaleGrads!.get(b.path)!.g];
        return Float32Array.from(a, (v, j) => ref.alpha * v + (1 - ref.alpha) * r[j]);
      });
      check({ signs, natural: natural.loss!, robust: robust.loss!, maskGrads });
    } finally {
      await graph!.close();
    }
  });

  // anp.ts's own iteration (noise drawn, ascent, both losses, the masks' SGD step and clip) on the fixture's
  // noise: its first mask step is lr times PyTorch's gradient.
  it("anp's iteration through ONNX Runtime moves the masks by the learning rate times PyTorch's gradient, leaving no tensor", async function () {
    if (!ortTrainWanted()) this.skip();
    const n0 = tf.memory().numTensors;
    const victim = zoo.loaded.model;
    const graph = await OrtModelGraph.create(victim, { bnTrain: true, loss: 'ce', paramGrads: false, bnScales: true, constantWeights: true }, 1);
    const work = victim.clone();
    const set = createBnMasks(work, 'anp', true);
    const lr = 0.2;
    const opt = new SGD(lr, 0.9);
    try {
      tf.tidy(() => set.masks.forEach((m, i) => m.assign(tf.tensor1d(ref.masks[i]))));
      const n = ref.images;
      const [h, w, c] = victim.inputShape;
      await iterationOnOrt(graph!, set, opt, Float32Array.from(zoo.aux.x.subarray(0, n * h * w * c)), Int32Array.from(zoo.aux.y.subarray(0, n)), { eps: ref.eps, alpha: ref.alpha }, new NoiseReplay(ref.noise.flat()));
      const after = await readMasks(set);
      let num = 0;
      let den = 0;
      after.forEach((m, i) =>
        m.forEach((v, j) => {
          const want = Math.min(1, Math.max(0, ref.masks[i][j] - lr * ref.maskGrads[i][j]));
          num += (v - want) ** 2;
          den += (want - ref.masks[i][j]) ** 2;
        }),
      );
      const rel = Math.sqrt(num / den);
      assert.ok(rel <= 2 * ref.float32.maskGradRelErr, `mask step off by ${rel.toExponential(2)} of PyTorch's (its float32: ${ref.float32.maskGradRelErr.toExponential(2)})`);
    } finally {
      await graph?.close();
      opt.dispose();
      set.dispose();
      work.dispose();
    }
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  it('on the backend: the same, leaving no tensor', async () => {
    const n0 = tf.memory().numTensors;
    const work = zoo.loaded.model.clone();
    const set = createBnMasks(work, 'anp', true);
    const x = makeBatch(zoo.aux, Int32Array.from({ length: ref.images }, (_, i) => i), undefined, undefined);
    const y = tf.tensor1d(Int32Array.from(zoo.aux.y.subarray(0, ref.images)), 'int32');
    try {
      tf.tidy(() => {
        set.masks.forEach((m, i) => m.assign(tf.tensor1d(ref.masks[i])));
        [...set.noise, ...set.noiseBias].forEach((v, i) => v.assign(tf.tensor1d(ref.noise[i])));
      });
      const noiseVars = [...set.noise, ...set.noiseBias];
      const perturbed = maskHook(set, true, false);
      const clean = maskHook(set, false, false);
      const signs = tf.tidy(() => {
        const { grads } = tf.variableGrads(() => crossEntropy(work.forward(x, { training: true, bnAffineHook: perturbed }), y), noiseVars);
        return noiseVars.map((v) => Array.from(grads[v.name].dataSync(), Math.sign));
      });
      tf.tidy(() => noiseVars.forEach((v, i) => v.assign(tf.add(v, tf.mul(tf.tensor1d(ref.ascentSigns[i]), ref.eps)))));
      const losses: number[] = [];
      const maskGrads = tf.tidy(() => {
        const { grads } = tf.variableGrads(() => {
          const natural = crossEntropy(work.forward(x, { training: true, bnAffineHook: clean }), y);
          const robust = crossEntropy(work.forward(x, { training: true, bnAffineHook: perturbed }), y);
          losses.push(natural.dataSync()[0], robust.dataSync()[0]);
          return tf.add(tf.mul(natural, ref.alpha), tf.mul(robust, 1 - ref.alpha)) as tf.Scalar;
        }, set.masks);
        return set.masks.map((m) => Float32Array.from(grads[m.name].dataSync()));
      });
      check({ signs, natural: losses[0], robust: losses[1], maskGrads });
    } finally {
      tf.dispose([x, y]);
      set.dispose();
      work.dispose();
    }
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });
});
