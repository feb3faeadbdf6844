/**
 * `nad`: Neural Attention Distillation (Li et al., 2021). A teacher is the victim fine-tuned on the auxiliary
 * set; the student (another copy of the victim) is trained with CE + sum_l beta_l * MSE(A(student_l),
 * A(teacher_l)) over the architecture's stage taps (the last two stages and the pooled feature), with
 * A(f) = sum over channels of |f|^2 per location, L2-normalized per image. The pooled feature is a 1x1 map, so
 * its A is constant and its term adds nothing, as in BackdoorBench (which taps it the same way). On models other
 * than PreAct-ResNet18 BackdoorBench taps the pooled feature alone, which leaves its student plain fine-tuning;
 * here every architecture's last two stages are tapped as well, as NAD's authors do.
 *
 * BackdoorBench's student step runs a separate forward for the logits and for each tap (the network truncated
 * after it), so each BatchNorm's running statistics move several times per step with the same batch; here one
 * forward moves them by the same amount (see bnUpdatesPerStep).
 *
 * Where ONNX Runtime loads, the teacher trains through its cross-entropy graph, and each student step is
 * three graph runs: the teacher's tapped features, the student's logits and features, then the student's weight
 * gradients seeded with the loss's gradients with respect to those (computed here on the backend).
 */
import * as tf from '@tensorflow/tfjs-core';
import { SGD } from '../nn/optim';
import { crossEntropy } from '../nn/train';
import type { Model } from '../nn/model';
import { BatchNorm2d } from '../nn/layers';
import { OrtModelGraph } from '../nn/ort_graph';
import { applyGradients } from '../nn/ort_train';
import { takeAllFloats } from '../nn/read';
import type { ForwardContext } from '../nn/module';
import { FAST_FINE_TUNE, trainEpochs } from './common';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';

/**
 * A(f) of a tapped feature: NHWC as the backend's forward records it, or NCHW as ONNX Runtime's graph outputs it
 * (the same map: the sum runs over the channel axis, the positions stay in row-major order).
 */
export function attentionMap(f: tf.Tensor, layout: 'nhwc' | 'nchw' = 'nhwc'): tf.Tensor2D {
  return tf.tidy(() => {
    const n = f.shape[0];
    // A pooled (rank-2) feature is a 1x1 map: its channel energy is one value per image.
    const a = f.rank === 4 ? tf.reshape(tf.sum(tf.square(f), layout === 'nhwc' ? 3 : 1), [n, -1]) : tf.reshape(tf.sum(tf.square(f), 1), [n, 1]);
    return tf.div(a, tf.add(tf.norm(a, 2, 1, true), 1e-6)) as tf.Tensor2D;
  });
}

export const nad: Defense = {
  id: 'nad',
  title: 'Neural Attention Distillation',
  cost: 2.0,
  choices: { studentSchedule: ['constant', 'cosine'] },
  defaults(profile: Profile) {
    return profile === 'paper'
      ? { teacherEpochs: 10, epochs: 10, lr: 0.01, momentum: 0.9, weightDecay: 5e-4, batchSize: 256, beta1: 500, beta2: 1000, beta3: 1000, studentSchedule: 'constant' }
      : // The student's rate follows a cosine here: at a constant 0.01 the student ends where its last noisy
        // batches put it. On the zoo's preact8-badnets (victim ACC 0.827; full test set, seed 0) a constant rate
        // kept 0.725 with BackdoorBench's 10 teacher epochs and 0.756 with 20; the cosine keeps 0.795 at ASR 0.103.
        // Teacher and student each train 20 epochs of batch 64, as `ft`'s fast profile: the student can only be
        // as clean as its teacher, and BackdoorBench's 10 epochs each left the zoo's Blended backdoor in both
        // (preact8-blended, student ASR 0.526 ± 0.152 over 8 seeds); with 20 each 0.166 ± 0.076 at ACC 0.802, and
        // the ten extra student epochs give back the accuracy that the stronger teacher's attention maps cost
        // (preact8-badnets: 0.778 with 10 + 10, 0.770 with a 20-epoch teacher alone, 0.794 with 20 + 20).
        { teacherEpochs: FAST_FINE_TUNE.epochs, epochs: FAST_FINE_TUNE.epochs, lr: FAST_FINE_TUNE.lr, momentum: 0.9, weightDecay: 5e-4, batchSize: FAST_FINE_TUNE.batchSize, beta1: 500, beta2: 1000, beta3: 1000, studentSchedule: 'cosine' };
  },
  departures(profile: Profile) {
    return profile === 'fast'
      ? "batch 64 (BackdoorBench: 256) and 20 epochs (10) for teacher and student, as ft's fast profile; the student's rate on a cosine over its epochs (constant)"
      : undefined;
  },
  async run(ctx: DefenseContext): Promise<DefenseOutcome> {
    const p = ctx.params as Record<string, number>;
    const taps = ctx.victim.layout.stages.slice(-3);
    const betas = [p.beta1, p.beta2, p.beta3].slice(3 - taps.length);
    const total = p.teacherEpochs + p.epochs;
    const teacher = ctx.victim.clone();
    const student = ctx.victim.clone();
    const updates = bnUpdatesPerStep(student, taps);
    try {
      const tOpt = new SGD(p.lr, p.momentum, p.weightDecay);
      try {
        await trainEpochs(ctx, teacher, tOpt, { epochs: p.teacherEpochs, lr: p.lr, batchSize: p.batchSize, progressTotal: total, label: 'teacher epoch' });
      } finally {
        tOpt.dispose();
      }
      const tapSet = new Set(taps);
      const momenta = new Map([...updates.keys()].map((bn) => [bn, bn.momentum]));
      for (const [bn, k] of updates) bn.momentum = 1 - (1 - bn.momentum) ** k;
      const sOpt = new SGD(p.lr, p.momentum, p.weightDecay);
      const graphs = ctx.ortTraining ? await StudentGraphs.create(teacher, student, taps, betas, ctx.ortThreads ?? 1) : undefined;
      if (ctx.ortTraining && !graphs) ctx.training?.backendWhy.add("NAD's student: the ONNX graphs do not cover this model");
      try {
        await trainEpochs(ctx, student, sOpt, {
          epochs: p.epochs,
          lr: p.lr,
          // BackdoorBench's adjust_learning_rate keeps the student's rate constant for its first 20 epochs
          // (`paper`); `fast` anneals it (see defaults).
          schedule: ctx.params.studentSchedule === 'cosine' ? 'cosine' : 'constant',
          batchSize: p.batchSize,
          progressBase: p.teacherEpochs,
          progressTotal: total,
          label: 'student epoch',
          ortStep: graphs ? (x, labels) => studentStepOnOrt(graphs, sOpt, x, labels, taps) : undefined,
          loss: (s) => {
            const sf = new Map<string, tf.Tensor>();
            const logits = student.forward(s.x, { ...s.ctx, taps: tapSet, features: sf });
            const tf_ = new Map<string, tf.Tensor>();
            const tctx: ForwardContext = { training: false, taps: tapSet, features: tf_ };
            teacher.forward(s.x, tctx);
            // The teacher's variables are not among the trained ones, so no gradient reaches it.
            return studentLoss(logits, s.y, taps.map((t) => sf.get(t)!), taps.map((t) => tf_.get(t)!), betas, 'nhwc');
          },
        });
      } finally {
        sOpt.dispose();
        await graphs?.close();
        for (const [bn, m] of momenta) bn.momentum = m;
      }
    } catch (e) {
      student.dispose();
      throw e;
    } finally {
      teacher.dispose();
    }
    return { model: student, details: { taps, betas, bnUpdatesPerStep: [...new Set(updates.values())].sort((a, b) => a - b) } };
  },
};

/**
 * How many same-batch updates of each BatchNorm's running statistics one BackdoorBench student step makes: one
 * for the logits' forward and one for each tap's truncated forward that passes through the layer (PreAct-ResNet18
 * with taps layer3, layer4 and the pooled feature: 4 in layer1-3, 3 in layer4). One forward with momentum
 * 1 - (1 - m)^k leaves the same running statistics as k forwards with m, and the same gradients (the loss reads
 * batch statistics, not running ones).
 */
export function bnUpdatesPerStep(model: Model, taps: string[]): Map<BatchNorm2d, number> {
  const modules = [...model.root.modules()];
  const inside = (path: string, tap: string) => path === tap || path.startsWith(`${tap}.`);
  // Where each tap's truncated network ends: its last module in forward order.
  const ends = taps.map((t) => modules.reduce((last, m, i) => (inside(m.path, t) ? i : last), -1));
  const counts = new Map<BatchNorm2d, number>();
  modules.forEach((m, i) => {
    if (m instanceof BatchNorm2d) counts.set(m, 1 + ends.filter((end) => i <= end).length);
  });
  return counts;
}

/** CE + sum_l beta_l * MSE(A(student_l), A(teacher_l)). */
function studentLoss(logits: tf.Tensor2D, y: tf.Tensor1D, studentTaps: tf.Tensor[], teacherTaps: tf.Tensor[], betas: number[], layout: 'nhwc' | 'nchw'): tf.Scalar {
  let loss: tf.Tensor = crossEntropy(logits, y);
  studentTaps.forEach((f, i) => {
    loss = tf.add(loss, tf.mul(tf.mean(tf.squaredDifference(attentionMap(f, layout), attentionMap(teacherTaps[i], layout))), betas[i]));
  });
  return loss as tf.Scalar;
}

/**
 * The ONNX Runtime graphs of NAD's student phase: the teacher's taps, and the student's whole step (the
 * cross-entropy and the attention terms against the teacher's maps, fed in) as one graph.
 */
class StudentGraphs {
  private constructor(
    readonly teacher: OrtModelGraph,
    readonly student: OrtModelGraph,
  ) {}

  static async create(teacher: Model, student: Model, taps: string[], betas: number[], threads: number): Promise<StudentGraphs | undefined> {
    const made = await Promise.all([
      OrtModelGraph.create(teacher, { bnTrain: false, loss: 'none', taps, constantWeights: true }, threads),
      OrtModelGraph.create(student, { bnTrain: true, loss: 'ce', paramGrads: true, taps, attention: betas }, threads),
    ]);
    if (made.some((g) => !g)) {
      await Promise.all(made.map((g) => g?.close()));
      return undefined;
    }
    const [a, b] = made as OrtModelGraph[];
    return new StudentGraphs(a, b);
  }

  async close(): Promise<void> {
    await Promise.all([this.teacher.close(), this.student.close()]);
  }
}

/**
 * One student step through ONNX Runtime: the same loss, update and BatchNorm statistics as the backend's. The
 * teacher's attention maps are computed here from its taps (small tensors); the student's loss, gradients and
 * batch statistics come out of one run.
 */
async function studentStepOnOrt(g: StudentGraphs, opt: SGD, x: Float32Array, labels: Int32Array, taps: string[]): Promise<number> {
  const n = labels.length;
  const teacherTaps = (await g.teacher.run(x, n)).taps!;
  const maps = await takeAllFloats(tf.tidy(() => taps.map((t) => attentionMap(tf.tensor(teacherTaps.get(t)!.data, teacherTaps.get(t)!.shape), 'nchw'))));
  const run = await g.student.run(x, n, { labels, teacherAttention: new Map(taps.map((t, i) => [t, maps[i]])) });
  applyGradients(g.student.model, opt, run.grads!);
  g.student.applyBatchStats(run.stats!, n);
  return run.loss!;
}
