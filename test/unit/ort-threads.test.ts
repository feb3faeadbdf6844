/**
 * The graphs the defenses train with give the same bits on 1, 2 and 4 ONNX Runtime threads: the training step,
 * the seeded product with pixel and parameter gradients (frozen BatchNorm) and ANP's BatchNorm scales, on the
 * architectures of the zoo at batch sizes that split unevenly, and GIC's whole step. This is what lets a cell use more than one
 * thread without its row depending on the machine's core count. (It failed before the weight gradients of
 * convolutions with more outputs than inputs were taken transposed: MLAS split those products by columns,
 * which changed how their long inner dimension was cut into partial sums.)
 */
import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import { OrtModelGraph, type GraphFeeds, type GraphRun } from '../../src/engine/nn/ort_graph';
import type { GradGraphOptions } from '../../src/engine/nn/ort_grad_contract';
import { OrtTrainer, ortTrainWanted } from '../../src/engine/nn/ort_train';
import { expectOrtThreads, grantOrtThreads } from '../../src/engine/nn/ort_threads';
import type { ArchSpec, Model } from '../../src/engine/nn/model';
import { Rng } from '../../src/engine/util/rng';
import { GIC_DEFAULTS, GicNet } from '../../src/engine/gic/gic';
import { buildCalibrationGraph, calibrationNet } from '../../src/engine/nn/ort_calibration_graph';

/** Every float array of a run, by name. */
function arrays(run: GraphRun): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  if (run.logits) out.set('logits', run.logits);
  if (run.loss !== undefined) out.set('loss', Float32Array.of(run.loss));
  if (run.dx) out.set('dx', run.dx);
  for (const [k, v] of run.grads ?? []) out.set(`grad/${k}`, v);
  for (const [k, v] of run.scaleGrads ?? []) out.set(`scale/${k}`, Float32Array.from([...v.g, ...v.b]));
  for (const [k, v] of run.stats ?? []) out.set(`stats/${k}`, Float32Array.from([...v.mean, ...v.variance]));
  for (const [k, v] of run.inputStats ?? []) out.set(`inputStats/${k}`, Float32Array.from([...v.mean, ...v.variance]));
  for (const [k, v] of run.taps ?? []) out.set(`tap/${k}`, v.data);
  return out;
}

function differing(a: Map<string, Float32Array>, b: Map<string, Float32Array>): string[] {
  const out: string[] = [];
  for (const [k, v] of a) {
    const w = b.get(k)!;
    let n = 0;
    for (let i = 0; i < v.length; i++) if (v[i] !== w[i] && !(Number.isNaN(v[i]) && Number.isNaN(w[i]))) n++;
    if (n) out.push(`${k} (${n} of ${v.length})`);
  }
  return out;
}

describe('ONNX Runtime graphs: the same bits on any thread count', function () {
  before(async function () {
    await useWasm();
    if (!ortTrainWanted()) this.skip();
  });

  const archs: Array<[string, ArchSpec]> = [
    ['preact-resnet18 width 8', { arch: 'preact-resnet18', inputShape: [28, 28, 1], numClasses: 10, options: { width: 8 } }],
    ['preact-resnet18 width 16', { arch: 'preact-resnet18', inputShape: [28, 28, 1], numClasses: 10, options: { width: 16 } }],
    ['small-cnn-32', { arch: 'small-cnn-32', inputShape: [32, 32, 3], numClasses: 10 }],
    ['a small VGG with a 256-wide classifier', { arch: 'vgg11-bn', inputShape: [16, 16, 3], numClasses: 10, options: { cfg: [8, 'M', 16, 'M', 32, 'M'], avgpool: 0, hidden: [256, 256], dropout: false } }],
  ];
  const forms: Array<[string, GradGraphOptions]> = [
    ['training step', { bnTrain: true, loss: 'ce' }],
    ['seeded product, pixels and parameters', { bnTrain: false, loss: 'seed', inputGrad: true, paramGrads: true }],
    ['BatchNorm scales', { bnTrain: false, loss: 'seed', bnScales: true, paramGrads: false }],
    ['pixels through constant weights', { bnTrain: false, loss: 'seed', inputGrad: true, paramGrads: false, constantWeights: true }],
    ["ANP's scales through constant weights", { bnTrain: true, loss: 'ce', bnScales: true, paramGrads: false, constantWeights: true }],
    // Evaluation on aux splits and the embeddings' features (`taps: []` stands for the model's feature layer) and
    // the BatchNorm input statistics (GIC's, NPD's).
    ['the forward pass with the feature tap', { bnTrain: false, loss: 'none', taps: [] }],
    ['the BatchNorm input statistics', { bnTrain: false, loss: 'none', inputStats: true }],
  ];
  for (const [name, spec] of archs) {
    it(`${name}: every form at batch 5, 64 and 116`, async () => {
      const tensors = tf.memory().numTensors;
      const model: Model = buildModel(spec, undefined, 1);
      const rng = new Rng(11);
      const [h, w, c] = spec.inputShape;
      try {
        for (const [formName, form] of forms) {
          const options = form.taps ? { ...form, taps: [model.layout.feature] } : form;
          const graphs = await Promise.all([1, 2, 4].map((t) => OrtModelGraph.create(model, options, t)));
          try {
            if (graphs.some((g) => !g)) {
              assert.ok(options.bnScales && !model.batchNorms().length, `${formName}: ONNX Runtime covers ${name}`);
              continue;
            }
            for (const n of [5, 64, 116]) {
              const x = Float32Array.from({ length: n * h * w * c }, () => rng.uniform(0, 1));
              const labels = Int32Array.from({ length: n }, () => rng.int(10));
              const dlogits = Float32Array.from({ length: n * 10 }, () => rng.uniform(-0.1, 0.1));
              const scales = new Map(model.batchNorms().map((bn) => [bn.path, { g: Float32Array.from({ length: bn.runningMean.size }, () => rng.uniform(0.5, 1.5)), b: Float32Array.from({ length: bn.runningMean.size }, () => rng.uniform(0.5, 1.5)) }]));
              const feeds: GraphFeeds = { ...(options.loss === 'ce' ? { labels } : { dlogits }), ...(options.bnScales ? { scales } : {}) };
              const runs = [];
              for (const g of graphs) runs.push(arrays(await g!.run(x, n, feeds)));
              for (const [i, t] of [[1, 2], [2, 4]]) {
                const off = differing(runs[0], runs[i]);
                assert.deepEqual(off, [], `${formName}, batch ${n}: 1 and ${t} threads differ in ${off.join(', ')}`);
              }
            }
          } finally {
            await Promise.all(graphs.map((g) => g?.close()));
          }
        }
      } finally {
        model.dispose();
      }
      assert.equal(tf.memory().numTensors, tensors, 'tensors leaked');
    });
  }

  it("GIC's step graph (g in front of a PreAct-ResNet18, both bounds) at batch 5 and 64", async () => {
    const tensors = tf.memory().numTensors;
    const victim = buildModel({ arch: 'preact-resnet18', inputShape: [28, 28, 1], numClasses: 10, options: { width: 8 } }, { mean: [0.3], std: [0.3] }, 1);
    const rng = new Rng(12);
    try {
      for (const norm of ['inf', '2'] as const) {
        const net = new GicNet([28, 28, 1], { ...GIC_DEFAULTS, norm, delta: norm === 'inf' ? 0.1 : 1.5 });
        for (const v of net.variables()) tf.tidy(() => v.assign(tf.tensor(Float32Array.from({ length: v.size }, () => rng.uniform(-0.3, 0.3)), v.shape)));
        const front = { h: net.h, globalTerm: net.globalTerm, delta: net.o.delta, norm, lambdaBn: 1 };
        const graphs = await Promise.all([1, 2, 4].map((t) => OrtModelGraph.create(calibrationNet(victim, front), { bnTrain: false, loss: 'ce' }, t, (o) => buildCalibrationGraph(victim, front, o.nchwcBlock))));
        try {
          for (const n of [5, 64]) {
            const x = Float32Array.from({ length: n * 784 }, () => rng.uniform(0, 1));
            const labels = Int32Array.from({ length: n }, () => rng.int(10));
            const runs = [];
            for (const g of graphs) runs.push(arrays(await g!.run(x, n, { labels })));
            for (const [i, t] of [[1, 2], [2, 4]]) {
              const off = differing(runs[0], runs[i]);
              assert.deepEqual(off, [], `L${norm}, batch ${n}: 1 and ${t} threads differ in ${off.join(', ')}`);
            }
          }
        } finally {
          await Promise.all(graphs.map((g) => g?.close()));
          net.dispose();
        }
      }
    } finally {
      victim.dispose();
    }
    assert.equal(tf.memory().numTensors, tensors, 'tensors leaked');
  });
  /** The first architecture's model and a seeded batch of 16 images for the trainers' thread tests. */
  function threadTestBatch(seed: number) {
    const model = buildModel(archs[0][1]);
    const n = 16;
    const rng = new Rng(seed);
    const x = Float32Array.from({ length: n * 28 * 28 }, () => rng.uniform(0, 1));
    const labels = Int32Array.from({ length: n }, (_, i) => i % 10);
    return { model, x, labels };
  }
  // A lone cell process starts training on one thread and is granted the job process's cores once that has
  // evaluated the victim (cell_pool.ts allSubmitted): the trainer moves to a session with more threads mid-run.
  it('a trainer granted more threads mid-run moves to them, with the same gradients step for step', async () => {
    const { model, x, labels } = threadTestBatch(5);
    const fixed = (await OrtTrainer.create(model, { threads: 1 }))!;
    const growing = (await OrtTrainer.create(model, { threads: 1 }))!;
    try {
      grantOrtThreads(2);
      const seen = new Set<number>();
      // The new session is made in the background while steps go on; the weights stay as they are, so every
      // step's gradients must equal the one-thread trainer's, before the move and after it.
      for (let step = 0; step < 200 && growing.threads < 2; step++) {
        seen.add(growing.threads);
        const [a, b] = [await fixed.gradients(x, [28, 28, 1], labels), await growing.gradients(x, [28, 28, 1], labels)];
        assert.deepEqual(differing(new Map(a.grads), new Map(b.grads)), [], `step ${step} on ${growing.threads} threads`);
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(growing.threads, 2, 'the trainer moved to the granted threads');
      const [a, b] = [await fixed.gradients(x, [28, 28, 1], labels), await growing.gradients(x, [28, 28, 1], labels)];
      assert.deepEqual(differing(new Map(a.grads), new Map(b.grads)), [], 'on 2 threads');
      assert.ok(seen.has(1), 'it trained on one thread before');
    } finally {
      grantOrtThreads(0);
      await fixed.close();
      await growing.close();
      model.dispose();
    }
  });
  // A lone cell expects the grant (cell_worker.ts): its trainers make the bigger session ahead, keep to their
  // own threads until the grant, and take the bigger session at the first step after it; a trainer made after
  // the grant starts on the granted threads.
  it('a trainer that expects a grant makes its session ahead and moves at the first step after the grant', async () => {
    const { model, x, labels } = threadTestBatch(6);
    const fixed = (await OrtTrainer.create(model, { threads: 1 }))!;
    expectOrtThreads(2);
    const expecting = (await OrtTrainer.create(model, { threads: 1 }))!;
    let late: OrtTrainer | undefined;
    try {
      assert.equal(await fixed.aheadThreads(), 0, 'made before the expectation: nothing ahead');
      assert.equal(await expecting.aheadThreads(), 2, 'the two-thread session made ahead');
      const same = async (t: OrtTrainer, what: string) => {
        const [a, b] = [await fixed.gradients(x, [28, 28, 1], labels), await t.gradients(x, [28, 28, 1], labels)];
        assert.deepEqual(differing(new Map(a.grads), new Map(b.grads)), [], what);
      };
      await same(expecting, 'before the grant');
      assert.equal(expecting.threads, 1, 'no grant yet: still one thread, its session ready or not');
      grantOrtThreads(2);
      await same(expecting, 'the first step after the grant');
      assert.equal(expecting.threads, 2, 'the first step after the grant ran on the session made ahead');
      late = (await OrtTrainer.create(model, { threads: 1 }))!;
      assert.equal(late.threads, 2, 'made after the grant: on the granted threads from the start');
      await same(late, 'a trainer made after the grant');
    } finally {
      grantOrtThreads(0);
      expectOrtThreads(0);
      await fixed.close();
      await expecting.close();
      await late?.close();
      model.dispose();
    }
  });
  // The graphs of the defenses with losses of their own (ANP, SAU, NC, i-BAU, NPD, NAD, GIC) grow the same way, at
  // the first run after the grant (nothing made ahead): a lone ANP cell on the zoo's width-16 victim took 75 s
  // instead of 116, the same row.
  it("a defense's graph granted more threads mid-run moves to them with the same outputs, a split graph's two parts too", async () => {
    const { model, x, labels } = threadTestBatch(7);
    const n = labels.length;
    const rng = new Rng(8);
    const scales = new Map(model.batchNorms().map((bn) => [bn.path, { g: Float32Array.from({ length: bn.runningMean.size }, () => rng.uniform(0.5, 1.5)), b: Float32Array.from({ length: bn.runningMean.size }, () => rng.uniform(0.5, 1.5)) }]));
    const dlogits = Float32Array.from({ length: n * 10 }, () => rng.uniform(-0.1, 0.1));
    const anp: GradGraphOptions = { bnTrain: true, loss: 'ce', bnScales: true, paramGrads: false, constantWeights: true };
    const split: GradGraphOptions = { bnTrain: false, loss: 'seed', inputGrad: true, paramGrads: true, split: true };
    const made = await Promise.all([OrtModelGraph.create(model, anp, 1), OrtModelGraph.create(model, anp, 1), OrtModelGraph.create(model, split, 1), OrtModelGraph.create(model, split, 1)]);
    const [fixedAnp, growingAnp, fixedSplit, growingSplit] = made.map((g) => g!);
    const splitRun = async (g: OrtModelGraph) => arrays(await g.backward(await g.forward(x, n), { dlogits }));
    try {
      grantOrtThreads(2);
      const seen = new Set<number>();
      for (let run = 0; run < 200 && (growingAnp.threads < 2 || growingSplit.threads < 2); run++) {
        seen.add(growingAnp.threads);
        const [a, b] = [arrays(await fixedAnp.run(x, n, { labels, scales })), arrays(await growingAnp.run(x, n, { labels, scales }))];
        assert.deepEqual(differing(a, b), [], `ANP's graph, run ${run} on ${growingAnp.threads} threads`);
        assert.deepEqual(differing(await splitRun(fixedSplit), await splitRun(growingSplit)), [], `the split graph, run ${run}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(growingAnp.threads, 2, "ANP's graph moved to the granted threads");
      assert.equal(growingSplit.threads, 2, "the split graph's parts moved to the granted threads");
      assert.ok(seen.has(1), 'it ran on one thread before');
      // Runs side by side on the grown sessions; a graph made after the grant starts on its threads.
      const [a, b, c] = await Promise.all([fixedAnp.run(x, n, { labels, scales }), growingAnp.run(x, n, { labels, scales }), growingAnp.run(x, n, { labels, scales })]);
      assert.deepEqual(differing(arrays(a), arrays(b)), [], 'on 2 threads');
      assert.deepEqual(differing(arrays(a), arrays(c)), [], 'on 2 threads, side by side');
      const late = (await OrtModelGraph.create(model, anp, 1))!;
      try {
        assert.equal(late.threads, 2, 'made after the grant: on the granted threads from the start');
        assert.deepEqual(differing(arrays(a), arrays(await late.run(x, n, { labels, scales }))), [], 'a graph made after the grant');
      } finally {
        await late.close();
      }
      // A grant that rises again (a pool's processes running out of cells one after another) is taken as well.
      grantOrtThreads(4);
      for (let run = 0; run < 200 && growingAnp.threads < 4; run++) {
        assert.deepEqual(differing(arrays(a), arrays(await growingAnp.run(x, n, { labels, scales }))), [], `run ${run} on ${growingAnp.threads} threads`);
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(growingAnp.threads, 4, 'moved on to 4 threads');
      assert.deepEqual(differing(arrays(a), arrays(await growingAnp.run(x, n, { labels, scales }))), [], 'on 4 threads');
      // A graph closed while its bigger session is still being made releases that one as well (nothing to wait for).
      grantOrtThreads(4);
      const closing = (await OrtModelGraph.create(model, anp, 1))!;
      grantOrtThreads(8);
      await closing.run(x, n, { labels, scales });
      await closing.close();
    } finally {
      grantOrtThreads(0);
      await Promise.all(made.map((g) => g!.close()));
      model.dispose();
    }
  });
});

