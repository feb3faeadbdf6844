/**
 * BatchNorm put back into a graph whose BatchNorm layers were folded into its convolutions.
 *
 * A network exported to ONNX in eval mode has each BatchNorm folded into the convolution before it. Its
 * predictions are unchanged, but the defenses are not: ANP, RNP and CLP work on BatchNorm channels and refuse
 * such a graph, and the defenses that train every weight (NAD, FT-SAM, FST, NC's unlearning...) train a
 * network without normalization, where the scale of each layer's weights matters again. Measured on the zoo's
 * plain CNN exported that way (`cnn-badnets`, victim ACC 0.807): NAD left ACC 0.277 and FT-SAM 0.152.
 *
 * Here a BatchNorm is inserted after every convolution that feeds a ReLU, with its running statistics measured
 * on the auxiliary images and gamma and beta chosen so that in eval mode it is the identity: the renormalized
 * model gives the victim's logits (to float rounding), and in training mode it normalizes as the original
 * network's BatchNorm did. The folded convolutions' output channels are rescaled to PyTorch's initial weight
 * norm (the new layer undoes the factor), so that fine-tuning takes the steps it takes on the original network
 * (see renormalize). The inserted layers are saved with the purified model (ONNX writes them as
 * BatchNormalization nodes in front of their ReLU).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ImageSet } from '../data/dataset';
import { BatchNorm2d, Conv2d, ReLU } from '../nn/layers';
import type { Model } from '../nn/model';
import type { Module } from '../nn/module';
import { makeBatch } from '../nn/train';
import { takeAllFloats } from '../nn/read';
import { OnnxGraph } from './onnx_graph';

/** Where BatchNorm layers can go back: the ReLUs fed directly by a convolution, with its output channels. */
export function foldedBatchNormSites(model: Model): Array<{ path: string; channels: number; conv: string }> {
  if (model.batchNorms().length > 0 || !(model.root instanceof OnnxGraph)) return [];
  const producers = new Map<string, { module: Module; channels: number }>();
  const sites: Array<{ path: string; channels: number; conv: string }> = [];
  for (const s of model.root.steps) {
    const input = producers.get(s.dyn[0]);
    if (s.module instanceof ReLU && input && isConvolution(input.module)) sites.push({ path: s.module.path, channels: input.channels, conv: input.module.path });
    producers.set(s.node.outputs[0], { module: s.module, channels: s.outDims[1] });
  }
  return sites;
}

/** PyTorch's default Conv2d initialization (kaiming_uniform, a = sqrt(5)): weight variance 1 / (3 fan_in). */
const INIT_CHANNEL_NORM = 1 / Math.sqrt(3);

/** Per output channel, the factor that brings a Conv2d's weights (HWIO) to INIT_CHANNEL_NORM; undefined for others. */
async function channelRescale(conv: Module | undefined): Promise<Float32Array | undefined> {
  if (!(conv instanceof Conv2d)) return undefined;
  const [kh, kw, cin, cout] = conv.weight.shape;
  const w = (await conv.weight.data()) as Float32Array;
  const sq = new Float64Array(cout);
  for (let i = 0; i < kh * kw * cin; i++) for (let c = 0; c < cout; c++) sq[c] += w[i * cout + c] ** 2;
  return Float32Array.from(sq, (v) => (v > 0 ? INIT_CHANNEL_NORM / Math.sqrt(v) : 1));
}

function isConvolution(m: Module): boolean {
  return m instanceof Conv2d || m.kind === 'Conv';
}

/**
 * A copy of `victim` with BatchNorm in front of each ReLU of foldedBatchNormSites, the identity in eval mode
 * with the statistics of `aux`; undefined when the victim has BatchNorm layers or no such site.
 */
export async function renormalize(victim: Model, aux: ImageSet, batchSize = 256): Promise<{ model: Model; layers: number } | undefined> {
  const sites = foldedBatchNormSites(victim);
  if (!sites.length) return undefined;
  const model = victim.clone();
  try {
    for (const { path, channels } of sites) model.insertBefore(path, () => new BatchNorm2d(channels));
    // The inserted layers start as mean 0, variance 1 (the identity up to eps), so each one's input statistics
    // are the convolution's outputs as the victim computes them.
    const sums = new Map<BatchNorm2d, { mean: Float64Array; second: Float64Array }>();
    const bns = model.batchNorms();
    for (const bn of bns) sums.set(bn, { mean: new Float64Array(bn.numFeatures), second: new Float64Array(bn.numFeatures) });
    for (let s = 0; s < aux.n; s += batchSize) {
      const idx = Array.from({ length: Math.min(batchSize, aux.n - s) }, (_, i) => s + i);
      const weight = idx.length / aux.n;
      // Each layer's batch mean and variance, read asynchronously (a GPU backend has no synchronous read).
      const moments = await takeAllFloats(
        tf.tidy(() => {
          const stats = new Map<string, { mean: tf.Tensor1D; variance: tf.Tensor1D }>();
          model.forward(makeBatch(aux, idx, undefined, undefined), { training: false, bnInputStats: stats });
          return bns.flatMap((bn) => [stats.get(bn.path)!.mean, stats.get(bn.path)!.variance]);
        }),
      );
      bns.forEach((bn, i) => {
        const [mean, variance] = [moments[2 * i], moments[2 * i + 1]];
        const acc = sums.get(bn)!;
        // Pooled over batches: E[x] and E[x^2] weighted by batch size.
        for (let c = 0; c < bn.numFeatures; c++) {
          acc.mean[c] += weight * mean[c];
          acc.second[c] += weight * (variance[c] + mean[c] * mean[c]);
        }
      });
    }
    // Each folded convolution's output channels, rescaled by s so that their weights have the norm PyTorch's
    // default initialization gives (1/sqrt(3) per output channel; the zoo's trained convolutions: 0.58-0.66).
    // The function does not change (the layer after undoes s), but a BatchNorm network trains differently
    // at another weight scale: the folded weights carry gamma / sigma, about twice the original norms on the
    // zoo's plain CNN, which quarters the effective learning rate of every step.
    const scales = await Promise.all(sites.map(({ conv }) => channelRescale(model.root.find(conv))));
    tf.tidy(() => {
      bns.forEach((bn, i) => {
        const acc = sums.get(bn)!;
        const scale = scales[i] ?? new Float32Array(bn.numFeatures).fill(1);
        const mean = Float32Array.from(acc.mean);
        const variance = Float32Array.from(acc.second, (m2, c) => Math.max(m2 - acc.mean[c] * acc.mean[c], 0));
        const conv = model.root.find(sites[i].conv);
        if (scales[i] && conv instanceof Conv2d) {
          const s = tf.tensor1d(scale);
          conv.weight.assign(tf.mul(conv.weight, s));
          if (conv.bias) conv.bias.assign(tf.mul(conv.bias, s));
        }
        // BN(s x) = x: running statistics of s x, gamma = sqrt(s^2 var + eps) / s, beta = mean.
        bn.runningMean.assign(tf.tensor1d(mean.map((m, c) => m * scale[c])));
        bn.runningVar.assign(tf.tensor1d(variance.map((v, c) => v * scale[c] * scale[c])));
        bn.weight.assign(tf.tensor1d(variance.map((v, c) => Math.sqrt(v * scale[c] * scale[c] + bn.eps) / scale[c])));
        bn.bias.assign(tf.tensor1d(mean));
      });
    });
    return { model, layers: sites.length };
  } catch (e) {
    model.dispose();
    throw e;
  }
}
