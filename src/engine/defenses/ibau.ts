/**
 * `ibau`: implicit Backdoor Adversarial Unlearning (Zeng et al., 2022), structured as BackdoorBench's
 * defense/i-bau.py. Rounds of a min-max game:
 *   - inner maximization: one universal perturbation delta (starting at zero each round), one SGD ascent step
 *     (lr 10) per auxiliary batch on L_inner = CE(f(x + delta), f's own prediction on x) - 0.001 ||delta||^2,
 *     delta kept within an L2 ball of radius `maxNorm` (10); as in BackdoorBench, x + delta is not clipped to
 *     the pixel range. BackdoorBench works on normalized inputs, our models take pixels: with the model's
 *     normalization std s, a pixel-space delta is s times the normalized one and its gradient 1/s times, so
 *     a step size becomes lr * s^2 (the ascent's and the fixed-point map's), the radius maxNorm * s and the
 *     penalty weight penalty / s^2 (its ||delta||^2 is 1/s^2 times larger in normalized space; for MNIST:
 *     about 0.95, 3.1 and 0.0105);
 *   - outer minimization: per batch, a random `portion` of the images carries delta and the model (Adam with AMSGrad,
 *     BatchNorm statistics frozen) follows the hypergradient of L_outer = CE(f(x + mask * delta*(theta)), y):
 *     the gradient of the unlearning loss through the inner optimum delta*(theta), see implicitHypergradient.
 *
 * BackdoorBench computes the implicit part of the hypergradient with second-order autodiff. TensorFlow.js
 * cannot differentiate its own gradient kernels (nor does our ONNX training graph), so the second-order products
 * are finite differences of first-order gradients here (checked against closed forms on a linear model in the
 * tests); every results row says so in `details.hypergradient`. Forward differences by default: from one shared
 * pass at delta, each product costs one gradient evaluation instead of central's two, which takes an unlearning
 * step from 3 weight-gradient and 8 pixel-gradient passes to 3 and 4. On a PyTorch-trained PreAct-ResNet18 (zoo
 * victim preact8-blended, one batch of 64 after a first round's ascent) neither scheme is exact: through the
 * ReLUs the differences see kinks that autodiff does not, so central differences at relative steps 5e-3, 2e-2
 * and 5e-2 differ from those at 1e-2 by 0.04-0.06 of the whole hypergradient (the implicit term is 0.10-0.14 of
 * it), forward ones at 1e-2 and 2e-2 by 0.065, and smaller steps drown in float32 rounding (forward at 1e-4:
 * implicit term 1.15 of the direct one). Deviation: the original evaluates L_inner's second derivatives on
 * its first auxiliary batch at every step (with the true labels); here they are taken on the current batch
 * (true labels too), a stochastic estimate of the inner problem delta* actually solves (the whole aux set).
 *
 * `portion` (0.1): BackdoorBench perturbs int(1% of the batch) (one image of its batches of 100 or 128) and
 * leaves the rest of the unlearning signal to the implicit term. At BackdoorBench's fixed-point step and K (0.1,
 * 5) the implicit term is small here (`details.implicitToDirect`, its norm over the direct term's: about 0.1 to
 * 0.25 in the first round, below 0.03 later), and larger steps or more iterations make the truncated Neumann
 * series diverge: after one ascent pass delta is not a maximum of L_inner (its Hessian has positive
 * eigenvalues), so the iterates grow (fixture, one batch: at a pixel-space step of 0.1 instead of 0.0095 the
 * implicit term is 4x the direct one after 5 iterations and 4000x after 20). Measured, fast profile (ACC/ASR;
 * test fixture: victim 0.957/1.000, random streams 1-6; demo victim 0.974/1.000, cells 4, 0, 1 of
 * scripts/bench-defenses.ts with a cached victim):
 *   - portion 0.5 (the former first-order default, K = 0): fixture 0.769/0.486, 0.948/0.503, 0.899/0.460,
 *     0.722/0.000 (streams 1-4), demo 0.556/0.000: ACC below 0.85 in 3 of 5 runs (after the first round,
 *     with or without the implicit term, class 0, the target, is at accuracy 0.00 on fixture streams 1 and 3);
 *   - portion 0.5, K = 5: fixture 0.817/0.185, 0.932/0.255, 0.735/0.373, 0.932/0.993, demo 0.498/0.000;
 *   - portion 0.1, K = 5 (default): fixture 0.925/0.573, 0.953/0.272, 0.953/0.399, 0.950/0.893, 0.955/0.163,
 *     0.955/0.189, demo 0.926/0.439, 0.947/0.794, 0.889/0.000: ACC >= 0.889 in all 9 runs, ASR halved in 6;
 *     K = 0 at the same portion: fixture 0.940/0.704, 0.953/0.388, 0.958/0.442, 0.955/0.436, 0.953/0.213,
 *     0.955/0.255, demo (cells 0, 1) 0.950/0.446, 0.936/0.054: the implicit term does not change the outcome
 *     measurably (mean fixture ASR 0.415 with it, 0.406 without);
 *   - portion 0.01 (BackdoorBench's), K = 5: fixture 0.943/0.863, 0.962/0.710, demo 0.958/0.422 (K = 0: demo
 *     0.950/0.992); portion 0.2 and 0.3 did no better than 0.1 on streams 1-2 (ASR 0.710/0.394, 0.954/0.810).
 * Whether a run purifies depends mostly on whether a round's delta finds the trigger (it does in the first
 * round on 5 of 6 fixture streams; later rounds' deltas are smaller, and the ASR can come back in them).
 *
 * `fast` unlearns two epochs a round: BackdoorBench's round unlearns on its whole 2,500-image aux set (10 steps of
 * 256), ours on 500 images gets 8 steps of 64 from one epoch. The last partial batch is kept, as BackdoorBench's
 * loader keeps it. On the zoo's PyTorch-trained victims (scripts/zoo; ACC / ASR, mean over seeds 0-7 for Blended
 * and SIG, 0-2 for the others): two epochs a round with the partial batch BadNets 0.806 / 0.054, Blended 0.796 /
 * 0.411 (single seeds 0.005 to 0.930), SIG 0.795 / 0.463, the plain CNN 0.784 / 0.266; three epochs a round
 * without it (21 steps) 0.805 / 0.057, 0.795 / 0.730, 0.792 / 0.335, 0.783 / 0.263; one epoch without it (seeds
 * 0-2) 0.791 / 0.107, 0.760 / 0.970, 0.777 / 0.671, 0.747 / 0.209. The extra steps are mostly on clean images, so
 * accuracy rises with them. Two epochs rather than three: with three the README's twelve-defense job on the
 * width-16 victim took 8 min 32 s, past its 8 minutes. Fifteen rounds of one epoch and three epochs a round, both
 * with central differences and without the partial batch (Blended, seeds 0-2): 0.792 / 0.502 and 0.797 / 0.453.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Adam } from '../nn/optim';
import { argmaxRows, batchCount, crossEntropy, makeBatch, makeBatchArray } from '../nn/train';
import { OrtModelGraph } from '../nn/ort_graph';
import { readFloats, takeScalar, takeScalars } from '../nn/read';
import type { Model } from '../nn/model';
import { JobError } from '../errors';
import { Pacer } from './common';
import { inputGradient } from './adversarial';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';

/** Relative size of the finite-difference step: ||eps v|| = FD_REL * max(||delta||, 1). */
export const FD_REL = 1e-2;

function l2(t: tf.Tensor): Promise<number> {
  return takeScalar(tf.norm(t));
}

/**
 * The finite-difference step for a direction v at delta: small relative to delta (so that it probes the
 * curvature at delta, not a secant across it) but not so small that float32 cancellation dominates
 * (central differences: error O(eps^2) from truncation, O(macheps / eps) from rounding). 0 when v = 0.
 */
async function fdStep(delta: tf.Tensor, v: tf.Tensor, rel: number): Promise<number> {
  const nv = await l2(v);
  return nv === 0 ? 0 : (rel * Math.max(await l2(delta), 1)) / nv;
}

/**
 * How the second-order products are differenced. 'central': (g(delta + eps v) - g(delta - eps v)) / (2 eps),
 * two gradient evaluations a product, truncation error O(eps^2). 'forward': (g(delta + eps v) - g(delta)) / eps,
 * one evaluation a product, g(delta) evaluated once and shared by all of them, truncation error O(eps). Both at
 * the same step FD_REL: on a PyTorch-trained network smaller steps drown in float32 rounding (see the header).
 */
export type Differences = 'central' | 'forward';

/**
 * Hessian-vector product of a scalar objective in delta, (d^2 L / d delta^2) v: central differences of its
 * first-order gradient, or forward differences from `base` = grad L(delta) when given.
 */
export async function hessianVectorProduct(objective: (d: tf.Tensor) => tf.Scalar, delta: tf.Tensor, v: tf.Tensor, rel = FD_REL, base?: tf.Tensor): Promise<tf.Tensor> {
  const eps = await fdStep(delta, v, rel);
  if (eps === 0) return tf.zerosLike(delta);
  return tf.tidy(() => {
    const g = tf.grad((d: tf.Tensor) => objective(d));
    const plus = g(tf.add(delta, tf.mul(v, eps)));
    if (base) return tf.div(tf.sub(plus, base), eps);
    const minus = g(tf.sub(delta, tf.mul(v, eps)));
    return tf.div(tf.sub(plus, minus), 2 * eps);
  });
}

/** The theta-gradients of `objective` at d, one tensor per variable (zeros where it does not depend on one). */
function thetaGradsAt(objective: (d: tf.Tensor) => tf.Scalar, vars: tf.Variable[], d: tf.Tensor): tf.Tensor[] {
  const { value, grads } = tf.variableGrads(() => objective(d), vars);
  value.dispose();
  return vars.map((w) => grads[w.name] ?? tf.zerosLike(w));
}

/**
 * Mixed second-derivative product (d^2 L / d theta d delta)^T v = grad_theta <grad_delta L, v>, by differences
 * of the theta-gradient along v (the mixed partials commute): central, or forward from `base` = grad_theta
 * L(delta) when given. One tensor per variable (zeros where L does not depend on it).
 */
export async function mixedProduct(objective: (d: tf.Tensor) => tf.Scalar, vars: tf.Variable[], delta: tf.Tensor, v: tf.Tensor, rel = FD_REL, base?: tf.Tensor[]): Promise<tf.Tensor[]> {
  const eps = await fdStep(delta, v, rel);
  if (eps === 0) return vars.map((w) => tf.zerosLike(w));
  return tf.tidy(() => {
    const plus = thetaGradsAt(objective, vars, tf.add(delta, tf.mul(v, eps)));
    if (base) return plus.map((p, i) => tf.div(tf.sub(p, base[i]), eps));
    const minus = thetaGradsAt(objective, vars, tf.sub(delta, tf.mul(v, eps)));
    return plus.map((p, i) => tf.div(tf.sub(p, minus[i]), 2 * eps));
  });
}

export interface HypergradientOptions {
  /** The fixed-point map's step. */
  alpha: number;
  /** Fixed-point iterations (0: the direct term alone). */
  K: number;
  /** Central or forward differences (default forward). */
  differences?: Differences;
  /** The relative finite-difference step (default FD_REL). */
  rel?: number;
}

export interface Hypergradient {
  /** d L_outer(delta*(theta), theta) / d theta, one tensor per variable (caller disposes). */
  grads: tf.Tensor[];
  /** L_outer at (delta, theta). */
  loss: number;
  /** ||implicit term|| / ||direct term|| over all variables (0 when K = 0). */
  implicitRatio: number;
}

/**
 * The hypergradient of F(theta) = L_outer(delta*(theta), theta), where delta*(theta) is a fixed point of the
 * inner ascent step Phi(delta, theta) = delta + alpha grad_delta L_inner(delta, theta) (a maximizer of L_inner),
 * in the fixed-point form of BackdoorBench's hypergrad.fixed_point (Grazzi et al., 2020), which i-BAU calls
 * with K iterations:
 *
 *   delta* = Phi(delta*, theta)  =>  d delta* / d theta = (I - d Phi/d delta)^-1 d Phi/d theta, so
 *   dF/d theta = dL_outer/d theta + (d Phi/d theta)^T v,   v = (I - d Phi/d delta)^-T dL_outer/d delta.
 *
 * v solves v = (d Phi/d delta)^T v + g_delta; K fixed-point iterations from v = 0 give the truncated Neumann
 * series sum_{j<K} (I + alpha H)^j g_delta, H = d^2 L_inner / d delta^2 (symmetric; negative definite near a
 * maximum, so the iteration contracts when alpha ||H|| < 2). With d Phi/d theta = alpha d^2 L_inner / d theta
 * d delta, the implicit term is alpha (d^2 L_inner / d theta d delta)^T v. (hypergrad writes the inner problem
 * as the minimization of -L_inner with Phi = delta - alpha grad(-L_inner): the same map, hence its minus signs.)
 * K = 0 leaves v = 0: the direct term alone, the first-order approximation.
 *
 * The second-order products are finite differences of first-order gradients (hessianVectorProduct,
 * mixedProduct): central, 2K extra gradient evaluations, or forward (the default), K + 1, one of them the inner
 * loss's gradients at delta in theta and delta together. `delta` must be a trainable variable (it is
 * differentiated together with vars in one pass); `outer` and `inner` read theta through vars.
 */
export async function implicitHypergradient(
  vars: tf.Variable[],
  delta: tf.Variable,
  outer: (d: tf.Tensor) => tf.Scalar,
  inner: (d: tf.Tensor) => tf.Scalar,
  o: HypergradientOptions,
): Promise<Hypergradient> {
  // Not one tidy: the finite-difference steps and the figures are read between the passes, and a tidy cannot
  // wait for a read. Every intermediate goes into `owned` and is disposed at the end.
  const owned: tf.Tensor[] = [];
  const own = <T extends tf.Tensor | tf.Tensor[]>(t: T): T => {
    owned.push(...(Array.isArray(t) ? t : [t]));
    return t;
  };
  const forward = (o.differences ?? 'forward') === 'forward';
  const rel = o.rel ?? FD_REL;
  try {
    // Direct terms: g_theta = dL_outer/d theta and g_delta = dL_outer/d delta at the inner solution.
    const { value, grads } = tf.variableGrads(() => outer(delta), [...vars, delta]);
    own(value);
    own(Object.values(grads));
    const loss = (await value.data())[0];
    const gTheta = vars.map((w) => grads[w.name] ?? own(tf.zerosLike(w)));
    const gDelta = grads[delta.name] ?? own(tf.zerosLike(delta));
    // Forward differences start from L_inner's gradients at delta, in theta and delta from one pass.
    let baseDelta: tf.Tensor | undefined;
    let baseTheta: tf.Tensor[] | undefined;
    if (forward && o.K > 0) {
      const at = tf.variableGrads(() => inner(delta), [...vars, delta]);
      own(at.value);
      own(Object.values(at.grads));
      baseDelta = at.grads[delta.name] ?? own(tf.zerosLike(delta));
      baseTheta = vars.map((w) => at.grads[w.name] ?? own(tf.zerosLike(w)));
    }
    // v_{k+1} = (I + alpha H) v_k + g_delta: the fixed-point iteration for (I - dPhi/d delta)^-T g_delta.
    let v: tf.Tensor = own(tf.zerosLike(delta));
    for (let k = 0; k < o.K; k++) {
      const hv = own(k === 0 ? tf.zerosLike(delta) : await hessianVectorProduct(inner, delta, v, rel, baseDelta));
      const prev = v;
      v = own(tf.tidy(() => tf.add(tf.add(prev, tf.mul(hv, o.alpha)), gDelta)));
    }
    // The implicit term (dPhi/d theta)^T v = alpha (d^2 L_inner / d theta d delta)^T v.
    const mixed = own(o.K > 0 ? await mixedProduct(inner, vars, delta, v, rel, baseTheta) : vars.map((w) => tf.zerosLike(w)));
    const implicit = own(mixed.map((m) => tf.mul(m, o.alpha)));
    // Per-tensor sums of squares, added up on the host in float64 in the variables' order.
    const sq = async (ts: tf.Tensor[]) => (await takeScalars(tf.tidy(() => ts.map((t) => tf.sum(tf.square(t)))))).reduce((s, x) => s + x, 0);
    const directNorm = Math.sqrt(await sq(gTheta));
    const implicitRatio = directNorm > 0 ? Math.sqrt(await sq(implicit)) / directNorm : 0;
    return { grads: tf.tidy(() => gTheta.map((g, i) => tf.add(g, implicit[i]))), loss, implicitRatio };
  } finally {
    tf.dispose(owned);
  }
}

/**
 * i-BAU's two losses of a batch on the backend, as functions of delta (BatchNorm frozen): L_outer = CE(f(x + mask *
 * delta), y), delta on the masked images only; L_inner = CE(f(x + delta), y) - penalty ||delta||^2.
 */
export function ibauLosses(model: Model, x: tf.Tensor4D, y: tf.Tensor1D, mask: tf.Tensor4D, penalty: number): { outer: (d: tf.Tensor) => tf.Scalar; inner: (d: tf.Tensor) => tf.Scalar } {
  const frozen = { training: false };
  return {
    outer: (d) => crossEntropy(model.forward(tf.add(x, tf.mul(mask, d)) as tf.Tensor4D, frozen), y),
    inner: (d) => tf.sub(crossEntropy(model.forward(tf.add(x, d) as tf.Tensor4D, frozen), y), tf.mul(tf.sum(tf.square(d)), penalty)) as tf.Scalar,
  };
}

export const ibau: Defense = {
  id: 'ibau',
  title: 'Implicit backdoor adversarial unlearning',
  cost: 2.8,
  defaults(profile: Profile) {
    return {
      rounds: 5,
      innerLr: 10,
      penalty: 0.001,
      maxNorm: 10,
      portion: 0.1,
      // hypergrad.GradientDescent(loss_inner, 0.1): the fixed-point map's step, and its iterations.
      fixedPointLr: 0.1,
      K: 5,
      // BackdoorBench's second-order autodiff, here by differences of first-order gradients (see above).
      differences: 'forward',
      lr: 1e-4,
      // BackdoorBench's round unlearns on its whole aux set (2,500 images, 10 steps of 256); one epoch of a
      // 500-image set is 8 steps of 64, two are 16 (1,000 images).
      epochsPerRound: profile === 'paper' ? 1 : 2,
      batchSize: profile === 'paper' ? 256 : 64,
    };
  },
  choices: { differences: ['forward', 'central'] },
  departures(profile: Profile) {
    // The former fast profile (Adam 1e-3, batches of 32) cost PyTorch-trained victims 0.3-0.4 of accuracy.
    const always =
      'delta on 10% of each unlearning batch (BackdoorBench: 1%) and kept within an L2 ball of 10 (as i-BAU\'s authors; BackdoorBench does not project); ' +
      'the implicit term\'s second derivatives by forward differences of first-order gradients (BackdoorBench: double backpropagation)';
    return profile === 'fast' ? `batch 64 (BackdoorBench: 256) and 2 unlearning epochs a round (1) so that a 500-image aux set gets 16 unlearning steps a round; ${always}` : always;
  },
  async run(ctx: DefenseContext): Promise<DefenseOutcome> {
    const p = ctx.params as Record<string, number>;
    const model = ctx.victim.clone();
    // AMSGrad, as every Adam of BackdoorBench's argparser_opt_scheduler (i-bau.py's outer optimizer).
    const opt = new Adam(p.lr, 0.9, 0.999, 1e-8, 0, true);
    const vars = model.trainableVariables();
    const [h, w, c] = ctx.aux.shape;
    // Pixel-space equivalents of the normalized-space steps and radius (see above).
    const std = ctx.victim.normalize?.std ?? [1];
    const s = std.reduce((a, b) => a + b, 0) / std.length;
    const innerLr = p.innerLr * s * s;
    const alpha = p.fixedPointLr * s * s;
    const maxNorm = p.maxNorm * s;
    // ||delta_normalized||^2 = ||delta_pixel||^2 / s^2, so the same penalty in pixel space weighs 1/s^2 more.
    const penalty = p.penalty / (s * s);
    // Trainable only so that the outer loss is differentiated in theta and delta in one pass; never stepped.
    const delta = tf.tidy(() => tf.variable(tf.zeros([1, h, w, c]), true));
    const norms: number[] = [];
    const ratios: number[] = [];
    const pacer = new Pacer(ctx);
    const graphs = ctx.ortTraining ? await IbauGraphs.create(model, ctx.ortThreads ?? 1) : undefined;
    if (ctx.ortTraining && !graphs) ctx.training?.backendWhy.add('i-BAU: the ONNX graphs do not cover this model');
    try {
      for (let r = 0; r < p.rounds; r++) {
        // Inner maximization: a universal perturbation, one ascent step per batch of the auxiliary set.
        tf.tidy(() => delta.assign(tf.zeros([1, h, w, c])));
        const order = ctx.rng.permutation(ctx.aux.n);
        const batches = Math.ceil(ctx.aux.n / p.batchSize);
        for (let b = 0; b < batches; b++) {
          await pacer.tick(r, p.rounds, `round ${r + 1}/${p.rounds}: perturbation, batch ${b + 1}/${batches}`);
          const idx = order.subarray(b * p.batchSize, Math.min(ctx.aux.n, (b + 1) * p.batchSize));
          if (graphs) {
            await graphs.ascent(delta, makeBatchArray(ctx.aux, idx, undefined, undefined), idx.length, innerLr, penalty, maxNorm);
            if (ctx.training) ctx.training.onnxruntimeSteps++;
            continue;
          }
          if (ctx.training) ctx.training.backendSteps++;
          const x = makeBatch(ctx.aux, idx, undefined, undefined);
          let next: tf.Tensor;
          // The batch is freed even when the step throws.
          try {
            next = tf.tidy(() => {
              // The model's own labels, as BackdoorBench: the perturbation moves images off what f predicts.
              const own = tf.argMax(model.forward(x, { training: false }), 1) as tf.Tensor1D;
              const g = inputGradient(delta as unknown as tf.Tensor4D, (d) => {
                // No clipping to [0,1] (as BackdoorBench): a clip passes no gradient at 0, which would freeze
                // delta on every black background pixel, where patch triggers live.
                const xp = tf.add(x, d) as tf.Tensor4D;
                return tf.sub(crossEntropy(model.forward(xp, { training: false }), own), tf.mul(tf.sum(tf.square(d)), penalty)) as tf.Scalar;
              });
              return tf.add(delta, tf.mul(g, innerLr));
            });
          } finally {
            x.dispose();
          }
          try {
            // The projection's scale is read between the two tidies: a tidy cannot wait for a read.
            const norm = await l2(next);
            tf.tidy(() => delta.assign(norm > maxNorm ? tf.mul(next, maxNorm / norm) : next));
          } finally {
            next.dispose();
          }
        }
        norms.push(Math.round((await l2(delta)) * 1000) / 1000);
        // Outer minimization: the hypergradient step on each batch, a portion of it carrying delta.
        let ratioSum = 0;
        let steps = 0;
        for (let e = 0; e < p.epochsPerRound; e++) {
          const order2 = ctx.rng.permutation(ctx.aux.n);
          // The last partial batch kept, as BackdoorBench's loader (drop_last False): 8 steps of 500 images, not 7.
          const nb = batchCount(ctx.aux, { batchSize: p.batchSize, dropLast: false });
          for (let b = 0; b < nb; b++) {
            await pacer.tick(r, p.rounds, `round ${r + 1}/${p.rounds}: unlearning ${e + 1}/${p.epochsPerRound}, batch ${b + 1}/${nb}`);
            const idx = order2.subarray(b * p.batchSize, Math.min(ctx.aux.n, (b + 1) * p.batchSize));
            const n = idx.length;
            // The same augmentation draws on both paths: the batch as an array first, a tensor of it for the backend.
            const xs = makeBatchArray(ctx.aux, idx, ctx.augment, ctx.rng);
            const x = tf.tensor4d(xs, [n, h, w, c]);
            const y = tf.tensor1d(Int32Array.from(idx, (i) => ctx.aux.y[i]), 'int32');
            const k = Math.max(1, Math.round(n * p.portion));
            const picked = new Float32Array(n);
            for (const i of ctx.rng.permutation(n).subarray(0, k)) picked[i] = 1;
            if (graphs) {
              x.dispose();
              y.dispose();
              const hg = await graphs.hypergradient(vars, delta, xs, Int32Array.from(idx, (i) => ctx.aux.y[i]), picked, penalty, { alpha, K: p.K, differences: ctx.params.differences as Differences });
              try {
                opt.lr = p.lr;
                opt.step(vars, hg.grads);
              } finally {
                tf.dispose(hg.grads);
              }
              if (!Number.isFinite(hg.loss)) throw new JobError('training diverged (loss is not finite)');
              ratioSum += hg.implicitRatio;
              steps++;
              if (ctx.training) ctx.training.onnxruntimeSteps++;
              continue;
            }
            if (ctx.training) ctx.training.backendSteps++;
            const mask = tf.tensor4d(picked, [n, 1, 1, 1]);
            try {
              const { outer, inner } = ibauLosses(model, x, y, mask, penalty);
              const hg = await implicitHypergradient(vars, delta, outer, inner, { alpha, K: p.K, differences: ctx.params.differences as Differences });
              opt.lr = p.lr;
              opt.step(vars, hg.grads);
              tf.dispose(hg.grads);
              if (!Number.isFinite(hg.loss)) throw new JobError('training diverged (loss is not finite)');
              ratioSum += hg.implicitRatio;
              steps++;
            } finally {
              x.dispose();
              y.dispose();
              mask.dispose();
            }
          }
        }
        ratios.push(Math.round((ratioSum / Math.max(1, steps)) * 1000) / 1000);
        await pacer.report(r + 1, p.rounds, `round ${r + 1}/${p.rounds}`);
      }
    } catch (e) {
      model.dispose();
      throw e;
    } finally {
      opt.dispose();
      delta.dispose();
      await graphs?.close();
    }
    return {
      model,
      details: {
        rounds: p.rounds,
        portion: p.portion,
        perturbationL2: norms,
        hypergradient: p.K > 0 ? `implicit (${ctx.params.differences} finite differences, K = ${p.K} fixed-point iterations)` : 'direct term only (K = 0)',
        implicitToDirect: ratios,
      },
    };
  },
};

/**
 * i-BAU's first-order gradients through ONNX Runtime, from which the same ascent and the same implicit
 * hypergradient (implicitHypergradient's fixed-point iteration and finite differences) are assembled here: the
 * model's own labels from its forward graph; d CE / d pixels from a cross-entropy graph (the universal
 * perturbation's gradient is its sum over the batch, times the images' mask); d CE / d theta and d pixels
 * together from another. BatchNorm is frozen throughout, as on the backend path.
 */
export class IbauGraphs {
  private constructor(
    readonly model: Model,
    readonly forward: OrtModelGraph,
    readonly pixels: OrtModelGraph,
    readonly both: OrtModelGraph,
  ) {}

  static async create(model: Model, threads: number): Promise<IbauGraphs | undefined> {
    const made = await Promise.all([
      OrtModelGraph.create(model, { bnTrain: false, loss: 'none' }, threads),
      OrtModelGraph.create(model, { bnTrain: false, loss: 'ce', inputGrad: true, paramGrads: false }, threads),
      OrtModelGraph.create(model, { bnTrain: false, loss: 'ce', inputGrad: true, paramGrads: true }, threads),
    ]);
    if (made.some((g) => !g)) {
      await Promise.all(made.map((g) => g?.close()));
      return undefined;
    }
    const [a, b, c] = made as OrtModelGraph[];
    return new IbauGraphs(model, a, b, c);
  }

  /** x + mask * d for a universal d (mask per image, 1 when absent). */
  private static perturb(x: Float32Array, n: number, d: Float32Array, mask?: Float32Array): Float32Array {
    const size = d.length;
    const out = new Float32Array(x.length);
    for (let i = 0; i < n; i++) {
      const m = mask ? mask[i] : 1;
      for (let j = 0; j < size; j++) out[i * size + j] = x[i * size + j] + m * d[j];
    }
    return out;
  }

  /** The per-image pixel gradients summed over the batch (times the mask): the universal perturbation's. */
  private static sumOverBatch(dx: Float32Array, n: number, size: number, mask?: Float32Array): Float32Array {
    const out = new Float32Array(size);
    for (let i = 0; i < n; i++) {
      const m = mask ? mask[i] : 1;
      if (m === 0) continue;
      for (let j = 0; j < size; j++) out[j] += m * dx[i * size + j];
    }
    return out;
  }

  /** grad_delta L_inner(d) = sum_n d CE(f(x + d), y) / d pixels - 2 penalty d. */
  private async innerGradDelta(x: Float32Array, n: number, labels: Int32Array, d: Float32Array, penalty: number): Promise<Float32Array> {
    const r = await this.pixels.run(IbauGraphs.perturb(x, n, d), n, { labels });
    return IbauGraphs.innerDeltaGradient(r.dx!, n, d, penalty);
  }

  /** grad_delta L_inner at d from the per-image pixel gradients of CE at x + d. */
  private static innerDeltaGradient(dx: Float32Array, n: number, d: Float32Array, penalty: number): Float32Array {
    const g = IbauGraphs.sumOverBatch(dx, n, d.length);
    for (let j = 0; j < g.length; j++) g[j] -= 2 * penalty * d[j];
    return g;
  }

  /** The inner ascent step of one batch, with the model's own labels, projected onto the L2 ball. */
  async ascent(delta: tf.Variable, x: Float32Array, n: number, innerLr: number, penalty: number, maxNorm: number): Promise<void> {
    const own = argmaxRows(await this.forward.logits(x, n), this.model.numClasses);
    const d = await readFloats(delta);
    const g = await this.innerGradDelta(x, n, own, d, penalty);
    const next = new Float32Array(d.length);
    for (let j = 0; j < d.length; j++) next[j] = d[j] + innerLr * g[j];
    const norm = Math.sqrt(sumOfSquares(next));
    if (norm > maxNorm) for (let j = 0; j < next.length; j++) next[j] *= maxNorm / norm;
    tf.tidy(() => delta.assign(tf.tensor(next, delta.shape)));
  }

  /** implicitHypergradient with its gradients from ONNX Runtime (the same iteration and finite differences). */
  async hypergradient(vars: tf.Variable[], delta: tf.Variable, x: Float32Array, labels: Int32Array, mask: Float32Array, penalty: number, o: HypergradientOptions): Promise<Hypergradient> {
    const n = labels.length;
    const d = await readFloats(delta);
    const size = d.length;
    const keyOf = new Map(this.model.root.namedParams().map(([key, p]) => [p.variable, key]));
    const thetaGrads = (g: Map<string, Float32Array>) => vars.map((v) => g.get(keyOf.get(v)!) ?? new Float32Array(v.size));
    const forward = (o.differences ?? 'forward') === 'forward';
    const rel = o.rel ?? FD_REL;
    const norm = (a: Float32Array) => Math.sqrt(sumOfSquares(a));
    const step = (v: Float32Array) => {
      const nv = norm(v);
      return nv === 0 ? 0 : (rel * Math.max(norm(d), 1)) / nv;
    };
    const along = (v: Float32Array, eps: number) => {
      const out = new Float32Array(size);
      for (let j = 0; j < size; j++) out[j] = d[j] + eps * v[j];
      return out;
    };
    // L_inner's gradients at d in theta and in delta, from one pass.
    const innerAt = async (at: Float32Array) => {
      const r = await this.both.run(IbauGraphs.perturb(x, n, at), n, { labels });
      return { theta: thetaGrads(r.grads!), delta: IbauGraphs.innerDeltaGradient(r.dx!, n, at, penalty) };
    };
    // Direct terms at the inner solution.
    const outer = await this.both.run(IbauGraphs.perturb(x, n, d, mask), n, { labels });
    const gTheta = thetaGrads(outer.grads!);
    const gDelta = IbauGraphs.sumOverBatch(outer.dx!, n, size, mask);
    // Forward differences start from L_inner's gradients at d.
    const base = forward && o.K > 0 ? await innerAt(d) : undefined;
    // v_{k+1} = (I + alpha H) v_k + g_delta, H v by differences of grad_delta L_inner.
    let v: Float32Array = new Float32Array(size);
    for (let k = 0; k < o.K; k++) {
      const hv = new Float32Array(size);
      const eps = k === 0 ? 0 : step(v);
      if (eps !== 0) {
        const plus = await this.innerGradDelta(x, n, labels, along(v, eps), penalty);
        if (base) for (let j = 0; j < size; j++) hv[j] = (plus[j] - base.delta[j]) / eps;
        else {
          const minus = await this.innerGradDelta(x, n, labels, along(v, -eps), penalty);
          for (let j = 0; j < size; j++) hv[j] = (plus[j] - minus[j]) / (2 * eps);
        }
      }
      const next = new Float32Array(size);
      for (let j = 0; j < size; j++) next[j] = v[j] + o.alpha * hv[j] + gDelta[j];
      v = next;
    }
    // The implicit term alpha (d^2 L_inner / d theta d delta)^T v, by differences of grad_theta L_inner.
    let implicit = vars.map((w) => new Float32Array(w.size));
    const eps = o.K > 0 ? step(v) : 0;
    if (eps !== 0) {
      const plus = (await innerAt(along(v, eps))).theta;
      const from = base ? base.theta : (await innerAt(along(v, -eps))).theta;
      const span = base ? eps : 2 * eps;
      implicit = plus.map((p, i) => {
        const out = new Float32Array(p.length);
        const f = from[i];
        for (let j = 0; j < p.length; j++) out[j] = (o.alpha * (p[j] - f[j])) / span;
        return out;
      });
    }
    const sq = (ts: Float32Array[]) => ts.reduce((s, t) => s + sumOfSquares(t), 0);
    const directNorm = Math.sqrt(sq(gTheta));
    const implicitRatio = directNorm > 0 ? Math.sqrt(sq(implicit)) / directNorm : 0;
    const total = (i: number) => {
      const out = new Float32Array(gTheta[i].length);
      for (let j = 0; j < out.length; j++) out[j] = gTheta[i][j] + implicit[i][j];
      return out;
    };
    return { grads: vars.map((w, i) => tf.tensor(total(i), w.shape)), loss: outer.loss!, implicitRatio };
  }

  async close(): Promise<void> {
    await Promise.all([this.forward.close(), this.pixels.close(), this.both.close()]);
  }
}

/**
 * Sum of the squares of a typed array's values, in float64, in index order (as `reduce` would): a plain loop,
 * since the array methods with a callback run several times slower over the model's 700,000 gradients.
 */
function sumOfSquares(a: Float32Array): number {
  let s = 0;
  for (let j = 0; j < a.length; j++) s += a[j] * a[j];
  return s;
}
