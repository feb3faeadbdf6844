/**
 * The pruning and adversarial defenses (anp, rnp, clp, sau, npd) on a tiny BadNets victim made here.
 * ANP brings the attack success rate below half of the victim's with clean accuracy above a floor; ANP and RNP
 * select on the aux validation split and report it; RNP halves the ASR too (i-BAU has its own file,
 * defenses-ibau.test.ts; NPD's bar is in defenses-zoo.test.ts); NPD trains only its inserted polarizer, which is
 * saved with the model; SAU finds shared adversarial examples without breaking the model, and halves the ASR of a
 * low-ratio blended victim (a trigger within its L_inf budget); CLP zeroes exactly the
 * outlying channels of a hand-built layer and chooses u on the auxiliary set; no tensor is left behind; a
 * cancelled ANP stops at its next progress report. SAU's perturbed images stay within eps of x, unclipped;
 * NPD's attack step follows BackdoorBench's (no gradient through the clip, an unclipped perturbation in the L2
 * bound, the loss cap, the targets).
 */
import { ortTrainWanted } from '../../src/engine/nn/ort_train';
import { newTrainingRecord } from '../../src/engine/defenses/defense';
import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { getDefense } from '../../src/engine/defenses';
import { CancelledError } from '../../src/engine/errors';
import { buildModel } from '../../src/engine/models';
import { BatchNorm2d, Conv2d } from '../../src/engine/nn/layers';
import { Rng } from '../../src/engine/util/rng';
import type { ImageSet } from '../../src/engine/data/dataset';
import type { DefenseParams } from '../../src/engine/defenses/defense';
import { buildFixture, cancelAtFirstReport, runDefense, type Fixture } from './defenses-fixture';
import { projectLinf, projectLinfArray } from '../../src/engine/defenses/adversarial';
import { npdPerturbationStep, npdTargets, perturbedImage } from '../../src/engine/defenses/npd';
import { calibrateEps } from '../../src/engine/defenses/anp';
import { createBnMasks } from '../../src/engine/defenses/bn_masks';
import { OrtModelGraph } from '../../src/engine/nn/ort_graph';

// [defense, overrides of the fast profile, highest ASR as a fraction of the victim's, lowest ACC]
const CASES: Array<[string, DefenseParams, number, number]> = [
  ['anp', { iterations: 150 }, 0.5, 0.85],
];

/** Counts the draws of `int(n)` (those a permutation makes apart) and `permutation(n)` by n. */
class CountingRng extends Rng {
  readonly ints = new Map<number, number>();
  readonly permutations = new Map<number, number>();
  private permuting = false;
  override int(n: number): number {
    if (!this.permuting) this.ints.set(n, (this.ints.get(n) ?? 0) + 1);
    return super.int(n);
  }
  override permutation(n: number): Int32Array {
    this.permutations.set(n, (this.permutations.get(n) ?? 0) + 1);
    this.permuting = true;
    try {
      return super.permutation(n);
    } finally {
      this.permuting = false;
    }
  }
}

describe('pruning and adversarial defenses on a tiny BadNets victim', function () {
  this.timeout(300_000);
  let f: Fixture;

  before(async () => {
    await useWasm();
    f = await buildFixture();
  });
  after(() => f?.victim.dispose());

  for (const [id, overrides, maxAsrFraction, minAcc] of CASES) {
    it(`${id} halves the ASR and keeps ACC >= ${minAcc}, leaving no tensor`, async () => {
      const n0 = tf.memory().numTensors;
      const { out, after, progress } = await runDefense(f, getDefense(id)!, overrides);
      assert.ok(after.asr <= maxAsrFraction * f.before.asr, `${id}: ASR ${after.asr.toFixed(3)} (victim ${f.before.asr.toFixed(3)})`);
      assert.ok(after.acc >= minAcc, `${id}: ACC ${after.acc.toFixed(3)}`);
      assert.ok(progress.length > 0, 'reports progress');
      out.model.dispose();
      assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
    });
  }

  // The same bar with ANP's noise and mask steps through ONNX Runtime (the scaled-BatchNorm graph).
  it('anp through ONNX Runtime halves the ASR and keeps ACC >= 0.85, every iteration on it, leaving no tensor', async function () {
    if (!ortTrainWanted()) this.skip();
    const n0 = tf.memory().numTensors;
    const training = newTrainingRecord();
    const { out, after } = await runDefense(f, getDefense('anp')!, { iterations: 150 }, { ortTraining: true, training });
    assert.ok(after.asr <= 0.5 * f.before.asr, `anp: ASR ${after.asr.toFixed(3)} (victim ${f.before.asr.toFixed(3)})`);
    assert.ok(after.acc >= 0.85, `anp: ACC ${after.acc.toFixed(3)}`);
    assert.deepEqual([training.onnxruntimeSteps, training.backendSteps], [150, 0]);
    out.model.dispose();
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  // ANP's eps calibration (calibrateEps, the epsKeep parameter): the largest eps under which the perturbation
  // keeps the fraction asked of the aux accuracy. Its probes see the same batches and noise draws, so ONNX Runtime
  // and the backend give the same curve. Measured here (aux accuracy 0.957 unperturbed): 0.223 at eps 0.4, 0.725
  // at 0.2, 0.471 at 0.3, 0.604 at 0.25, 0.518 at 0.275, 0.488 at 0.2875 (one image apart at 0.25 on the
  // backend), so eps 0.288.
  it('anp calibrates eps (epsKeep) to keep half of the aux accuracy, the same through ONNX Runtime as on the backend', async function () {
    if (!ortTrainWanted()) this.skip();
    const n0 = tf.memory().numTensors;
    const keep = 0.5;
    const pick = async (onOrt: boolean) => {
      const work = f.victim.clone();
      const set = createBnMasks(work, 'anp', true);
      const graph = onOrt ? await OrtModelGraph.create(f.victim, { bnTrain: true, loss: 'ce', paramGrads: false, bnScales: true, constantWeights: true }, 1) : undefined;
      try {
        return await calibrateEps(work, set, graph, f.aux, 0.4, keep, 64, 8, 5, new Rng(3));
      } finally {
        await graph?.close();
        set.dispose();
        work.dispose();
      }
    };
    const [ort, backend] = [await pick(true), await pick(false)];
    assert.equal(ort.eps, backend.eps, `eps ${ort.eps} (ONNX Runtime) vs ${backend.eps} (backend)`);
    for (const [i, [e, a]] of ort.probes.entries()) assert.ok(Math.abs(a - backend.probes[i][1]) <= 1 / 256 + 1e-9, `eps ${e}: ${a} vs ${backend.probes[i][1]}`);
    // 0.4 takes more than half (it is probed first), the chosen eps keeps half, the smallest probe above it does not.
    const { eps, cleanAcc, probes } = ort;
    assert.ok(probes[0][0] === 0.4 && probes[0][1] < keep * cleanAcc, `eps 0.4: ${probes[0][1]} of ${cleanAcc}`);
    const atChosen = probes.find(([e]) => Math.abs(e - eps) < 1e-3);
    assert.ok(atChosen && atChosen[1] >= keep * cleanAcc, `chosen eps ${eps}: ${atChosen?.[1]} of ${cleanAcc}`);
    const above = probes.filter(([e]) => e > eps + 1e-3).sort((a, b) => a[0] - b[0])[0];
    assert.ok(above && above[1] < keep * cleanAcc && above[0] - eps <= 0.4 / 32 + 1e-9, `next probe above ${eps}: ${above}`);
    // Between the curve's 0.2 (0.725 of 0.957 kept) and 0.3 (0.471).
    assert.ok(eps > 0.2 && eps < 0.3, `eps ${eps}`);
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  // BackdoorBench draws ANP's batches with replacement (`paper`); `fast` takes them by epochs of a permutation.
  it("anp draws its batches with replacement where asked (paper's default) and by epochs otherwise", async () => {
    assert.equal(getDefense('anp')!.defaults('paper').sampling, 'replacement');
    assert.equal(getDefense('anp')!.defaults('fast').sampling, 'epochs');
    const trainSize = f.aux.n - Math.round(f.aux.n * 0.2);
    const draws = async (sampling: string) => {
      const rng = new CountingRng(5);
      const { out } = await runDefense(f, getDefense('anp')!, { iterations: 10, sampling }, { rng });
      out.model.dispose();
      return { ints: rng.ints.get(trainSize) ?? 0, permutations: rng.permutations.get(trainSize) ?? 0 };
    };
    // 10 batches of 64 from the split's images: 640 single draws, or a permutation per 3 batches.
    assert.deepEqual(await draws('replacement'), { ints: 640, permutations: 0 });
    assert.deepEqual(await draws('epochs'), { ints: 0, permutations: 4 });
  });

  it('anp reports the pruning threshold chosen on the aux validation split', async () => {
    const { out } = await runDefense(f, getDefense('anp')!, { iterations: 40 });
    out.model.dispose();
    const d = out.details!;
    assert.equal(d.selectedOn, 'aux validation split');
    assert.ok(d.threshold === null || (typeof d.threshold === 'number' && d.threshold >= 0 && d.threshold <= 0.9), `threshold ${d.threshold}`);
    // The chosen threshold keeps the validation accuracy within accRatio of the unpruned model's.
    const ratio = Number(getDefense('anp')!.defaults('fast').accRatio);
    assert.ok(Number(d.auxValAcc) >= ratio * Number(d.auxValAccBefore) - 1e-9, `${d.auxValAcc} vs ${d.auxValAccBefore}`);
  });

  // Measured (fixture victim ACC 0.957, ASR 1.000): ACC 0.912, ASR 0.179, 10 channels pruned (random streams 2 and 3:
  // ACC 0.814 and 0.837, ASR 0.000 and 0.251).
  it('rnp halves the ASR and keeps ACC >= 0.8, pruning on the aux validation split, leaving no tensor', async () => {
    const n0 = tf.memory().numTensors;
    const { out, after, progress } = await runDefense(f, getDefense('rnp')!);
    assert.ok(after.asr <= 0.5 * f.before.asr, `rnp: ASR ${after.asr.toFixed(3)} (victim ${f.before.asr.toFixed(3)})`);
    assert.ok(after.acc >= 0.8, `rnp: ACC ${after.acc.toFixed(3)}`);
    assert.ok(progress.length > 0, 'reports progress');
    const d = out.details!;
    assert.equal(d.selectedOn, 'aux validation split');
    assert.ok((d.pruned as string[]).length > 0 && (d.pruned as string[]).length === d.prunedChannels);
    // Every kept pruning holds the validation accuracy within accRatio of the unpruned model's.
    const ratio = Number(getDefense('rnp')!.defaults('fast').accRatio);
    assert.ok(Number(d.auxValAcc) >= ratio * Number(d.auxValAccBefore) - 1e-9, `${d.auxValAcc} vs ${d.auxValAccBefore}`);
    // Pruning is gamma = 0 on the victim's channels, nothing else changes.
    const [layer, ch] = /^(.*)\[(\d+)\]$/.exec((d.pruned as string[])[0])!.slice(1);
    assert.equal((out.model.root.find(layer) as BatchNorm2d).weight.dataSync()[Number(ch)], 0);
    out.model.dispose();
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  // What NPD does to a model: a polarizer inserted and trained, the backbone frozen, saved with the model. Whether
  // it purifies is checked on the PyTorch-trained zoo victim (defenses-zoo.test.ts: ASR 0.979 -> 0.059, ACC
  // 0.827 -> 0.813 on the whole test set). On this tiny victim its ASR is unstable from stream to stream since the
  // last partial batch is kept as PyTorch keeps it (0.56 / 0.24 at the defaults; 0.50 / 0.68 with 30 epochs),
  // so it is not asserted here.
  // Unlearning and mask steps through ONNX Runtime. Measured: ACC 0.890, ASR 0.115, 4 unlearning epochs, 7
  // channels pruned.
  it('rnp through ONNX Runtime halves the ASR and keeps ACC >= 0.8, every step on it, leaving no tensor', async function () {
    if (!ortTrainWanted()) this.skip();
    const n0 = tf.memory().numTensors;
    const training = newTrainingRecord();
    const { out, after } = await runDefense(f, getDefense('rnp')!, {}, { ortTraining: true, training });
    assert.ok(after.asr <= 0.5 * f.before.asr, `rnp: ASR ${after.asr.toFixed(3)} (victim ${f.before.asr.toFixed(3)})`);
    assert.ok(after.acc >= 0.8, `rnp: ACC ${after.acc.toFixed(3)}`);
    assert.ok(training.onnxruntimeSteps > 0 && training.backendSteps === 0, JSON.stringify(training));
    out.model.dispose();
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  it('npd trains only an inserted polarizer, saved with the model, leaving no tensor', async () => {
    const n0 = tf.memory().numTensors;
    const { out, progress } = await runDefense(f, getDefense('npd')!, { epochs: 2, warmupEpochs: 1 }, { rng: new Rng(1).fork('npd') });
    assert.ok(progress.length > 0, 'reports progress');
    const at = String(out.details!.insertedBefore);
    const keys = [...(await out.model.stateDict()).keys()];
    assert.ok(keys.includes(`${at}.inserted.0.weight`) && keys.includes(`${at}.inserted.1.weight`), keys.join(' '));
    // The backbone is frozen: the last conv's own weights are the victim's.
    const key = `${at}.weight`;
    assert.deepEqual((await out.model.stateDict()).get(key)!.data, (await f.victim.stateDict()).get(key)!.data);
    out.model.dispose();
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  // The same defense with every step through ONNX Runtime (the polarizer alone gets gradients there). Its
  // ACC/ASR are not compared with the backend path's here: this victim's max pools see exact ties (a constant
  // background), which ONNX Runtime and TensorFlow.js break differently, so the attack's pixel gradients and
  // all that follows differ. npd-onnx.test.ts compares the two paths' steps on a PreAct-ResNet18. Nor is the
  // ASR asserted: on this small CNN of our own, three epochs of NPD land anywhere from ACC 0.31 / ASR 0.00 to
  // 0.77 / 1.00 with the random stream, whatever the attack's clip or early stop (scratch runs over streams 1-5);
  // defenses-zoo.test.ts holds NPD to the ASR and ACC bar on the PyTorch-trained PreAct-ResNet18.
  it('npd through ONNX Runtime: every step on it, the backbone frozen, the polarizer trained', async function () {
    if (!ortTrainWanted()) this.skip();
    const n0 = tf.memory().numTensors;
    const training = newTrainingRecord();
    const { out, after } = await runDefense(f, getDefense('npd')!, { epochs: 3, warmupEpochs: 1 }, { rng: new Rng(1).fork('npd'), ortTraining: true, training });
    try {
      assert.ok(training.onnxruntimeSteps > 0 && training.backendSteps === 0, JSON.stringify(training));
      const at = String(out.details!.insertedBefore);
      const state = await out.model.stateDict();
      for (const [key, t] of await f.victim.stateDict()) assert.deepEqual(state.get(key)!.data, t.data, `${key} moved`);
      // The polarizer starts as the identity (a 1x1 convolution, [c, c, 1, 1]) and moved from it.
      const w = state.get(`${at}.inserted.0.weight`)!.data as Float32Array;
      const c = Math.round(Math.sqrt(w.length));
      assert.ok(w.some((v, i) => v !== (i % (c + 1) === 0 ? 1 : 0)), 'the polarizer trained');
      assert.ok(Number.isFinite(after.acc) && Number.isFinite(after.asr), 'the purified model was evaluated');
    } finally {
      out.model.dispose();
    }
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  it('sau unlearns shared adversarial examples without breaking the model, leaving no tensor', async () => {
    const n0 = tf.memory().numTensors;
    const { out, after } = await runDefense(f, getDefense('sau')!, { epochs: 2 });
    assert.ok(after.acc >= f.before.acc - 0.1, `sau: ACC ${after.acc.toFixed(3)}`);
    assert.ok(Number(out.details!.sharedAdversarialFraction) > 0, 'finds shared adversarial examples');
    out.model.dispose();
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  it('anp stops at its next iteration when cancelled and frees its tensors', async () => {
    const reports = await cancelAtFirstReport(f, getDefense('anp')!);
    assert.equal(reports.length, 1, 'nothing runs after the cancellation');
  });
});

// SAU's PGD stays within L_inf 0.2 of the image; the BadNets patch above needs brightness >= 0.5 to fire, so SAU
// cannot find it there. A blended trigger at alpha 0.1 moves no pixel by more than 0.1: within SAU's budget.
describe('SAU on a tiny blended victim whose trigger lies within its budget', function () {
  this.timeout(300_000);
  let f: Fixture;

  before(async () => {
    await useWasm();
    f = await buildFixture(7, { type: 'blended', alpha: 0.1 });
  });
  after(() => f?.victim.dispose());

  // With the former fast profile's schedule (Adam 1e-3, batches of 32, 10 epochs), which this tiny victim needs;
  // the default profile is checked on a PyTorch-trained victim in defenses-zoo.test.ts.
  // Measured (victim ACC 0.957, ASR 1.000): random stream 1: ACC 0.945, ASR 0.000; stream
  // 2: ACC 0.942, ASR 0.000. With lambda = 0 (the same clean fine-tuning, no unlearning term), stream 1 keeps
  // ASR 1.000 (ACC 0.943): the drop is SAU's shared-adversarial unlearning.
  it('sau halves the ASR and keeps ACC >= 0.9, leaving no tensor', async () => {
    assert.ok(f.before.asr >= 0.9, `victim ASR ${f.before.asr.toFixed(3)}`);
    const n0 = tf.memory().numTensors;
    const { out, after, progress } = await runDefense(f, getDefense('sau')!, { lr: 1e-3, batchSize: 32, epochs: 10 });
    assert.ok(after.asr <= 0.5 * f.before.asr, `sau: ASR ${after.asr.toFixed(3)} (victim ${f.before.asr.toFixed(3)})`);
    assert.ok(after.acc >= 0.9, `sau: ACC ${after.acc.toFixed(3)} (victim ${f.before.acc.toFixed(3)})`);
    assert.ok(progress.length > 0, 'reports progress');
    out.model.dispose();
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  // The same run with both of SAU's steps through ONNX Runtime (forward passes, pixel and weight gradients);
  // measured: ACC 0.932, ASR 0.000, all 100 steps on ONNX Runtime.
  it('sau through ONNX Runtime meets the same bar, every step on it, leaving no tensor', async function () {
    if (!ortTrainWanted()) this.skip();
    const n0 = tf.memory().numTensors;
    const training = newTrainingRecord();
    const { out, after } = await runDefense(f, getDefense('sau')!, { lr: 1e-3, batchSize: 32, epochs: 10 }, { ortTraining: true, training });
    assert.ok(after.asr <= 0.5 * f.before.asr, `sau: ASR ${after.asr.toFixed(3)} (victim ${f.before.asr.toFixed(3)})`);
    assert.ok(after.acc >= 0.9, `sau: ACC ${after.acc.toFixed(3)} (victim ${f.before.acc.toFixed(3)})`);
    assert.deepEqual([training.onnxruntimeSteps > 0, training.backendSteps], [true, 0]);
    out.model.dispose();
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });
});

describe('CLP u on the auxiliary set', () => {
  before(useWasm);

  /**
   * One conv layer of 16 channels: channels 5 and 9 have 50x and 40x larger kernels. Two outliers raise the
   * layer's std so much that neither exceeds mean + 3 std (z = 2.87 and 2.2): u = 3 prunes nothing. The head
   * reads channel 0 (and channel 5 when `outlierMatters`); labels are the unpruned model's predictions.
   */
  function handBuilt(outlierMatters: boolean): { model: ReturnType<typeof buildModel>; aux: ImageSet } {
    const model = buildModel({ arch: 'plain-cnn', inputShape: [6, 6, 1], numClasses: 2, options: { layers: [16] } });
    const conv = model.root.find('features.0') as Conv2d;
    const w = new Float32Array(9 * 16);
    for (let k = 0; k < 16; k++) for (let i = 0; i < 9; i++) w[i * 16 + k] = (k === 5 ? 50 : k === 9 ? 40 : 1) * (i === 4 ? 1 : 0.1);
    conv.weight.assign(tf.tensor4d(w, [3, 3, 1, 16]));
    const head = model.head();
    const hw = new Float32Array(16 * 2);
    hw[0 * 2 + 0] = 1;
    if (outlierMatters) hw[5 * 2 + 1] = 0.03;
    head.weight.assign(tf.tensor2d(hw, [16, 2]));
    head.bias!.assign(tf.tensor1d([0, 0.5]));
    const rng = new Rng(3);
    const n = 40;
    const x = new Float32Array(n * 36);
    const y = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const level = (i % 4) / 3;
      for (let j = 0; j < 36; j++) x[i * 36 + j] = Math.min(1, level * (0.7 + 0.3 * rng.next()));
    }
    const pred = tf.tidy(() => tf.argMax(model.forward(tf.tensor4d(x, [n, 6, 6, 1])), 1).dataSync());
    for (let i = 0; i < n; i++) y[i] = pred[i];
    return { model, aux: { n, shape: [6, 6, 1], x, y, numClasses: 2 } };
  }

  it('u = 3 (paper) prunes nothing on a narrow layer with two outliers; u = auto prunes both, chosen on the aux set', async () => {
    const clp = getDefense('clp')!;
    const { model, aux } = handBuilt(false);
    const labels = new Set(aux.y);
    assert.equal(labels.size, 2, 'the hand-built set has both classes');
    const n0 = tf.memory().numTensors;
    const ctx = { victim: model, aux, augment: { cropPadding: 0, flip: false }, rng: new Rng(0), progress: () => undefined };
    const paper = await clp.run({ ...ctx, profile: 'paper', params: clp.defaults('paper') });
    assert.equal(paper.details!.prunedChannels, 0);
    const auto = await clp.run({ ...ctx, profile: 'fast', params: clp.defaults('fast') });
    assert.deepEqual(auto.details!.pruned, { 'features.1': [5, 9] });
    // z of channel 9 is 2.2: the largest u on the 0.25 grid that selects it is 2.
    assert.equal(auto.details!.u, 2);
    assert.equal(auto.details!.selectedOn, 'auxiliary set');
    const bn = auto.model.root.find('features.1') as BatchNorm2d;
    const gamma = bn.weight.dataSync();
    for (let k = 0; k < 16; k++) assert.equal(gamma[k], k === 5 || k === 9 ? 0 : 1, `gamma[${k}]`);
    paper.model.dispose();
    auto.model.dispose();
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
    model.dispose();
  });

  it('u = auto does not prune a channel the aux accuracy needs', async () => {
    const clp = getDefense('clp')!;
    const { model, aux } = handBuilt(true);
    const out = await clp.run({ victim: model, aux, augment: { cropPadding: 0, flip: false }, rng: new Rng(0), profile: 'fast', params: clp.defaults('fast'), progress: () => undefined });
    assert.equal(out.details!.prunedChannels, 0, `pruned ${JSON.stringify(out.details!.pruned)}`);
    assert.equal(out.details!.u, 3);
    out.model.dispose();
    model.dispose();
  });
});

describe("SAU's projection of x' onto the L_inf ball", () => {
  before(useWasm);

  it('keeps x + delta within eps of x without clipping to [0,1], as BackdoorBench, on tensors and on arrays alike', () => {
    const x = Float32Array.of(0, 1, 0.5, 0.1);
    const moved = Float32Array.of(-0.5, 1.3, 0.52, 0.35);
    const eps = 0.2;
    const expected = [-0.2, 1.2, 0.52, 0.3];
    const flat = projectLinfArray(x, moved, eps);
    const tensor = tf.tidy(() => projectLinf(tf.tensor4d(x, [1, 2, 2, 1]), tf.tensor4d(moved, [1, 2, 2, 1]), eps).dataSync());
    for (const [i, want] of expected.entries()) {
      assert.ok(Math.abs(flat[i] - want) < 1e-6, `array ${i}: ${flat[i]} (want ${want})`);
      assert.ok(Math.abs(tensor[i] - want) < 1e-6, `tensor ${i}: ${tensor[i]} (want ${want})`);
    }
  });
});

describe("NPD's attack step, as BackdoorBench's npd.py", () => {
  it('moves only pixels whose x + pert lies in [0,1], keeps the perturbation unclipped within the L2 bound, and clips the image', () => {
    // One image of four pixels, two classes; the gradient's signs are all positive, so each moving pixel steps by -0.5.
    const x = Float32Array.of(0, 0.2, 1, 0.6);
    const pert = Float32Array.of(-0.1, 0, 0, 0.5);
    const dx = Float32Array.of(1, 1, 1, 1);
    const logits = Float32Array.of(0, 1);
    npdPerturbationStep(x, pert, dx, logits, Int32Array.of(1), 2, 0.5, 10, 'image');
    // Pixel 0 sits at -0.1 (outside [0,1]: no gradient); pixel 3 at 1.1 likewise; pixels 1 and 2 step.
    for (const [i, want] of [-0.1, -0.5, -0.5, 0.5].entries()) assert.ok(Math.abs(pert[i] - want) < 1e-6, `pert ${i}: ${pert[i]} (want ${want})`);
    const image = perturbedImage(x, pert);
    for (const [i, want] of [0, 0, 0.5, 1].entries()) assert.ok(Math.abs(image[i] - want) < 1e-6, `pixel ${i}: ${image[i]} (want ${want})`);
    // With a bound of 0.5 the perturbation (norm sqrt(0.76)) is scaled onto the ball, the clipped pixels included.
    const bounded = Float32Array.of(-0.1, 0, 0, 0.5);
    npdPerturbationStep(x, bounded, dx, logits, Int32Array.of(1), 2, 0.5, 0.5, 'image');
    const norm = Math.hypot(...bounded);
    assert.ok(Math.abs(norm - 0.5) < 1e-6, `norm ${norm}`);
    assert.ok(bounded[0] < 0 && bounded[3] > 0, 'the out-of-range pixels keep their share');
  });

  it("with attackClip 'perturbation' (the fast profile) keeps the perturbation to what the clipped image shows", () => {
    const x = Float32Array.of(0, 0.2, 1, 0.6);
    const pert = new Float32Array(4);
    // Signs: pixel 0 and 2 step out of [0,1], pixels 1 and 3 step inside it.
    npdPerturbationStep(x, pert, Float32Array.of(1, 1, -1, -1), Float32Array.of(0, 1), Int32Array.of(1), 2, 0.5, 10, 'perturbation');
    for (const [i, want] of [0, -0.2, 0, 0.4].entries()) assert.ok(Math.abs(pert[i] - want) < 1e-6, `pert ${i}: ${pert[i]} (want ${want})`);
    // The same step as BackdoorBench's keeps -0.5 and +0.5 on the two clipped pixels.
    const unclipped = new Float32Array(4);
    npdPerturbationStep(x, unclipped, Float32Array.of(1, 1, -1, -1), Float32Array.of(0, 1), Int32Array.of(1), 2, 0.5, 10, 'image');
    assert.deepEqual(Array.from(unclipped), [-0.5, -0.5, 0.5, 0.5]);
  });

  it('leaves an image whose cross-entropy toward its target is above 80 alone, and picks targets with the true logit at -10', () => {
    const x = Float32Array.of(0.5, 0.5);
    const pert = new Float32Array(2);
    // Two images of one pixel each; the first is 100 logits away from its target.
    npdPerturbationStep(x, pert, Float32Array.of(1, 1), Float32Array.of(100, 0, 0, 1), Int32Array.of(1, 1), 2, 0.1, 10, 'image');
    assert.ok(pert[0] === 0 && Math.abs(pert[1] + 0.1) < 1e-7, `pert ${Array.from(pert)}`);
    // Every other logit below -10: the true class stays the target, as in BackdoorBench.
    assert.deepEqual(Array.from(npdTargets(Float32Array.of(5, -20, -30, 0, 3, 1), Int32Array.of(0, 1), 3)), [0, 2]);
  });
});
