/**
 * i-BAU's implicit hypergradient. On a linear softmax model, where the second derivatives have closed forms and
 * the inner maximization can be solved to convergence: the finite-difference Hessian-vector product matches
 * W (diag p - p p^T) W^T v - 2 lambda v; the mixed product matches its closed form; and the hypergradient with
 * K fixed-point iterations matches the derivative of L_outer(delta*(theta), theta) measured by re-solving the
 * inner problem at theta +- h u, which the direct term alone misses. On the fixture's tiny BadNets victim:
 * details.hypergradient, the clean accuracy kept and the ASR lowered on two random streams (not halved on
 * both: see ibau.ts), progress, cancellation and no tensor left behind.
 */
import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { getDefense } from '../../src/engine/defenses';
import { hessianVectorProduct, IbauGraphs, ibauLosses, implicitHypergradient, mixedProduct } from '../../src/engine/defenses/ibau';
import { ortTrainWanted } from '../../src/engine/nn/ort_train';
import { newTrainingRecord } from '../../src/engine/defenses/defense';
import { crossEntropy, makeBatchArray } from '../../src/engine/nn/train';
import { maxAbsDiff } from '../helpers/parity';
import { CancelledError } from '../../src/engine/errors';
import { Rng } from '../../src/engine/util/rng';
import { buildFixture, cancelAtFirstReport, runDefense, type Fixture } from './defenses-fixture';

/** Relative L2 distance of b from a. */
function relErr(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.norm(tf.sub(a, b)).dataSync()[0] / tf.norm(a).dataSync()[0]);
}

describe('i-BAU hypergradient on a linear softmax model (closed forms)', () => {
  const D = 6;
  const C = 3;
  const N = 8;
  const LAMBDA = 1;
  let W: tf.Variable;
  let b: tf.Variable;
  let x: tf.Tensor2D;
  let y: tf.Tensor1D;
  let mask: tf.Tensor2D;
  // L_inner(delta) = CE((x + delta) W + b, y) - lambda ||delta||^2 (maximized); L_outer = CE((x + mask delta) W + b, y).
  const inner = (d: tf.Tensor) => tf.sub(crossEntropy(tf.add(tf.matMul(tf.add(x, d), W), b) as tf.Tensor2D, y), tf.mul(tf.sum(tf.square(d)), LAMBDA)) as tf.Scalar;
  const outer = (d: tf.Tensor) => crossEntropy(tf.add(tf.matMul(tf.add(x, tf.mul(mask, d)), W), b) as tf.Tensor2D, y);
  const rand = (rng: Rng, n: number, scale: number) => Float32Array.from({ length: n }, () => (rng.next() * 2 - 1) * scale);

  before(async () => {
    await useWasm();
    const rng = new Rng(11);
    W = tf.variable(tf.tensor2d(rand(rng, D * C, 0.8), [D, C]), true);
    b = tf.variable(tf.tensor1d(rand(rng, C, 0.3)), true);
    x = tf.tensor2d(rand(rng, N * D, 1), [N, D]);
    y = tf.tensor1d(Int32Array.from({ length: N }, (_, i) => i % C), 'int32');
    mask = tf.tensor2d(Float32Array.from({ length: N }, (_, i) => (i % 2 ? 1 : 0)), [N, 1]);
  });
  after(() => tf.dispose([W, b, x, y, mask]));

  /** delta*(theta): gradient ascent on the strongly concave inner problem until it stops moving. */
  function solveInner(): tf.Tensor {
    let d = tf.zeros([1, D]);
    const g = tf.grad((t: tf.Tensor) => inner(t));
    for (let i = 0; i < 400; i++) {
      const next = tf.tidy(() => tf.add(d, tf.mul(g(d), 0.2)));
      d.dispose();
      d = next;
    }
    return d;
  }

  // Central differences: error O(eps^2); forward ones, from the gradient at delta: O(eps) (ibau.ts's FD_REL).
  for (const [differences, tolerance] of [['central', 2e-3], ['forward', 2e-2]] as const) {
    it(`the ${differences}-difference HVP in delta matches W (diag p - p p^T) W^T v - 2 lambda v`, async () => {
      const n0 = tf.memory().numTensors;
      // A scope rather than tf.tidy: the products await their reads.
      tf.engine().startScope();
      try {
        const delta = tf.tensor2d(rand(new Rng(2), D, 0.5), [1, D]);
        const v = tf.tensor2d(rand(new Rng(3), D, 1), [1, D]);
        const p = tf.softmax(tf.add(tf.matMul(tf.add(x, delta), W), b)); // [N, C]
        const u = tf.matMul(v, W); // [1, C]
        const pu = tf.sum(tf.mul(p, u), 1, true); // [N, 1]
        const exact = tf.sub(tf.matMul(tf.mean(tf.sub(tf.mul(p, u), tf.mul(p, pu)), 0, true), W, false, true), tf.mul(v, 2 * LAMBDA));
        const base = differences === 'forward' ? tf.grad((d: tf.Tensor) => inner(d))(delta) : undefined;
        const fd = await hessianVectorProduct(inner, delta, v, undefined, base);
        const e = relErr(exact, fd);
        assert.ok(e < tolerance, `relative error ${e}`);
      } finally {
        tf.engine().endScope();
      }
      assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
    });

    it(`the ${differences}-difference mixed product matches grad_theta <grad_delta L_inner, v> in closed form`, async () => {
      const n0 = tf.memory().numTensors;
      // A scope rather than tf.tidy: the products await their reads.
      tf.engine().startScope();
      try {
        const delta = tf.tensor2d(rand(new Rng(4), D, 0.5), [1, D]);
        const v = tf.tensor2d(rand(new Rng(5), D, 1), [1, D]);
        // grad_delta L_inner = mean_i (p_i - e_{y_i}) W^T - 2 lambda delta, so <grad_delta L_inner, v> = mean_i (p_i - e_i) . u,
        // u = v W. Its theta-gradient: d/dW = mean_i [v^T (p_i - e_i) + z_i^T J_i u], d/db = mean_i J_i u, with
        // z_i = x_i + delta and J_i = diag(p_i) - p_i p_i^T the softmax Jacobian.
        const z = tf.add(x, delta);
        const p = tf.softmax(tf.add(tf.matMul(z, W), b));
        const e = tf.cast(tf.oneHot(y, C), 'float32');
        const u = tf.matMul(v, W);
        const Ju = tf.sub(tf.mul(p, u), tf.mul(p, tf.sum(tf.mul(p, u), 1, true))); // [N, C]
        const dW = tf.add(tf.matMul(v, tf.mean(tf.sub(p, e), 0, true), true, false), tf.div(tf.matMul(z, Ju, true, false), N));
        const db = tf.mean(Ju, 0);
        const at = differences === 'forward' ? tf.variableGrads(() => inner(delta), [W, b]).grads : undefined;
        const base = at ? [at[W.name], at[b.name]] : undefined;
        const [fW, fb] = await mixedProduct(inner, [W, b], delta, v, undefined, base);
        assert.ok(relErr(dW, fW) < tolerance, `W: relative error ${relErr(dW, fW)}`);
        assert.ok(relErr(db, fb) < tolerance, `b: relative error ${relErr(db, fb)}`);
      } finally {
        tf.engine().endScope();
      }
      assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
    });
  }

  for (const differences of ['central', 'forward'] as const) {
  it(`with K fixed-point iterations the hypergradient (${differences} differences) is the derivative of L_outer(delta*(theta), theta); the direct term is not`, async () => {
    const n0 = tf.memory().numTensors;
    const star = solveInner();
    const delta = tf.variable(star, true);
    star.dispose();
    const full = await implicitHypergradient([W, b], delta, outer, inner, { alpha: 0.2, K: 200, differences });
    const direct = await implicitHypergradient([W, b], delta, outer, inner, { alpha: 0.2, K: 0, differences });
    delta.dispose();
    // F(theta + h u) - F(theta - h u), re-solving the inner problem at each theta, along the implicit term
    // (full - direct, normalized): the direction in which the two hypergradients differ most.
    const [uW, ub] = tf.tidy(() => {
      const diff = full.grads.map((g, i) => tf.sub(g, direct.grads[i]));
      const norm = Math.sqrt(diff.reduce((s, t) => s + tf.sum(tf.square(t)).dataSync()[0], 0));
      return diff.map((t) => tf.div(t, norm));
    });
    const h = 0.02;
    const F = (sign: number): number => {
      const W0 = W.clone();
      const b0 = b.clone();
      tf.tidy(() => {
        W.assign(tf.add(W0, tf.mul(uW, sign * h)));
        b.assign(tf.add(b0, tf.mul(ub, sign * h)));
      });
      const d = solveInner();
      const f = tf.tidy(() => outer(d).dataSync()[0]);
      d.dispose();
      W.assign(W0);
      b.assign(b0);
      tf.dispose([W0, b0]);
      return f;
    };
    const measured = (F(1) - F(-1)) / (2 * h);
    const dot = (g: tf.Tensor[]) => tf.tidy(() => tf.sum(tf.mul(g[0], uW)).dataSync()[0] + tf.sum(tf.mul(g[1], ub)).dataSync()[0]);
    const viaImplicit = dot(full.grads);
    const viaDirect = dot(direct.grads);
    tf.dispose([uW, ub, full.grads, direct.grads]);
    // Measured: implicit 0.14287, re-solved 0.14291, direct 0.12435.
    assert.ok(Math.abs(viaImplicit - measured) <= 0.01 * Math.abs(measured), `implicit ${viaImplicit} vs measured ${measured}`);
    assert.ok(Math.abs(viaImplicit - measured) <= 0.05 * Math.abs(viaDirect - measured), `implicit ${viaImplicit}, direct ${viaDirect}, measured ${measured}`);
    assert.ok(Math.abs(viaDirect - measured) >= 0.1 * Math.abs(measured), `direct ${viaDirect} vs measured ${measured}`);
    assert.ok(full.implicitRatio > 0 && direct.implicitRatio === 0);
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });
  }
});

describe('i-BAU on a tiny BadNets victim', function () {
  this.timeout(600_000);
  let f: Fixture;

  before(async () => {
    await useWasm();
    f = await buildFixture();
  });
  after(() => f?.victim.dispose());

  it('records the implicit hypergradient and how large its implicit term is, leaving no tensor', async () => {
    const n0 = tf.memory().numTensors;
    const { out, progress } = await runDefense(f, getDefense('ibau')!, { rounds: 1 });
    out.model.dispose();
    assert.equal(out.details!.hypergradient, 'implicit (forward finite differences, K = 5 fixed-point iterations)');
    const ratios = out.details!.implicitToDirect as number[];
    assert.ok(ratios.length === 1 && ratios[0] > 0, JSON.stringify(ratios));
    assert.deepEqual(progress[progress.length - 1], [1, 1]);
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  // Measured with portion 0.1, K = 5, Adam 1e-3, batches of 32, one unlearning epoch a round, forward differences, the
  // last partial batch kept (victim ACC 0.957, ASR 1.000): stream 1: ACC 0.953, ASR 0.612; stream 2: ACC 0.947,
  // ASR 0.242 (central differences, partial batch dropped: 0.925 / 0.573 and 0.953 / 0.272). The former default (portion 0.5, direct term only) gave 0.769/0.486 and
  // 0.948/0.503. i-BAU does not halve the ASR on both streams (see ibau.ts for the runs and why); this checks
  // what this schedule does hold: the clean accuracy, and an ASR at least a quarter below the victim's (a fall,
  // not run-to-run noise).
  for (const stream of [1, 2]) {
    it(`keeps ACC >= 0.9 and lowers the ASR by at least a quarter (random stream ${stream}), leaving no tensor`, async () => {
      const n0 = tf.memory().numTensors;
      // The former fast profile's rate, batch and one unlearning epoch a round (Adam 1e-3, 32), which this tiny
      // victim needs; the default profile is checked on the PyTorch-trained victims of scripts/zoo.
      const { out, after, progress } = await runDefense(f, getDefense('ibau')!, { lr: 1e-3, batchSize: 32, epochsPerRound: 1 }, { rng: new Rng(stream).fork('ibau') });
      assert.ok(after.acc >= 0.9, `ibau: ACC ${after.acc.toFixed(3)}`);
      assert.ok(after.asr <= 0.75 * f.before.asr, `ibau: ASR ${after.asr.toFixed(3)} (victim ${f.before.asr.toFixed(3)})`);
      assert.ok(progress.length > 0, 'reports progress');
      out.model.dispose();
      assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
    });
  }

  // The hypergradient assembled from ONNX Runtime's first-order gradients against the backend's, on one batch
  // of the fixture: the same fixed-point iteration and finite differences, so the same step up to float32.
  it('through ONNX Runtime: the hypergradient of a batch equals the backend one, and a run keeps ACC >= 0.9', async function () {
    if (!ortTrainWanted()) this.skip();
    const n0 = tf.memory().numTensors;
    const model = f.victim.clone();
    const graphs = await IbauGraphs.create(model, 1);
    assert.ok(graphs, 'ONNX Runtime loads and covers the model');
    const [h, w, c] = f.aux.shape;
    const n = 16;
    const idx = Array.from({ length: n }, (_, i) => i * 7);
    const xs = makeBatchArray(f.aux, idx, undefined, undefined);
    const labels = Int32Array.from(idx, (i) => f.aux.y[i]);
    const mask = Float32Array.from({ length: n }, (_, i) => (i % 4 === 0 ? 1 : 0));
    const delta = tf.tidy(() => tf.variable(tf.mul(tf.randomUniform([1, h, w, c], -1, 1, 'float32', 9), 0.3), true));
    const vars = model.trainableVariables();
    const penalty = 0.01;
    try {
      for (const differences of ['forward', 'central'] as const) {
        const ours = await graphs!.hypergradient(vars, delta, xs, labels, mask, penalty, { alpha: 0.01, K: 5, differences });
        let ref: { grads: Float32Array[]; loss: number; ratio: number };
        // A scope rather than tf.tidy: the hypergradient awaits its reads.
        tf.engine().startScope();
        try {
          const x = tf.tensor4d(xs, [n, h, w, c]);
          const y = tf.tensor1d(labels, 'int32');
          const m = tf.tensor4d(mask, [n, 1, 1, 1]);
          const { outer, inner } = ibauLosses(model, x, y, m, penalty);
          const hg = await implicitHypergradient(vars, delta, outer, inner, { alpha: 0.01, K: 5, differences });
          ref = { grads: hg.grads.map((g) => Float32Array.from(g.dataSync())), loss: hg.loss, ratio: hg.implicitRatio };
        } finally {
          tf.engine().endScope();
        }
        assert.ok(Math.abs(ours.loss - ref.loss) < 1e-4, `${differences}: loss ${ours.loss} vs ${ref.loss}`);
        assert.ok(ref.ratio > 0 && Math.abs(ours.implicitRatio - ref.ratio) < 0.05 * ref.ratio + 1e-4, `${differences}: implicit/direct ${ours.implicitRatio} vs ${ref.ratio}`);
        ours.grads.forEach((g, i) => {
          const { diff, scale } = maxAbsDiff(g.dataSync() as Float32Array, ref.grads[i]);
          assert.ok(diff <= 1e-2 * Math.max(scale, 1e-4), `${differences}, ${vars[i].name}: ${diff} of ${scale}`);
        });
        tf.dispose(ours.grads);
      }
    } finally {
      await graphs!.close();
      delta.dispose();
      model.dispose();
    }
    const training = newTrainingRecord();
    const { out, after } = await runDefense(f, getDefense('ibau')!, { lr: 1e-3, batchSize: 32, epochsPerRound: 1 }, { rng: new Rng(1).fork('ibau'), ortTraining: true, training });
    assert.ok(after.acc >= 0.9, `ibau: ACC ${after.acc.toFixed(3)}`);
    assert.ok(training.onnxruntimeSteps > 0 && training.backendSteps === 0, JSON.stringify(training));
    out.model.dispose();
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  it('K = 0 is the direct term alone and says so', async () => {
    const { out } = await runDefense(f, getDefense('ibau')!, { rounds: 1, K: 0 });
    out.model.dispose();
    assert.equal(out.details!.hypergradient, 'direct term only (K = 0)');
    assert.deepEqual(out.details!.implicitToDirect, [0]);
  });

  it('stops at its next batch when cancelled and frees its tensors', async () => {
    const reports = await cancelAtFirstReport(f, getDefense('ibau')!);
    assert.equal(reports.length, 1, 'nothing runs after the cancellation');
  });
});
