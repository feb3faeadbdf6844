/**
 * Plain Conv/BN/ReLU/pool stacks described by a short layer list, with torchvision-like keys
 * (`features.N`, `classifier`). Used for the embedded demo's MNIST victim (`small-cnn`) and the benchmark
 * model `small-cnn-32`. Such a stack cannot be recognised from a state_dict (ReLU and pooling leave no
 * trace), so jobs name it with `arch`.
 */
import { BatchNorm2d, Conv2d, GlobalAvgPool, Linear, MaxPool2d, ReLU, Sequential } from '../nn/layers';
import type { Module } from '../nn/module';
import type { ArchLayout } from '../nn/model';
import type { Rng } from '../util/rng';

/** A conv layer with `c` output channels (3x3, padding 1, then BN and ReLU), or a 2x2 max pool. */
export type PlainLayer = number | 'M';

export const PLAIN_CNNS: Record<string, PlainLayer[]> = {
  // 28x28 digits: 4 narrow conv layers, two pools; about 97% on the embedded digits after 6 epochs, and
  // fast enough (~800 images/s on one wasm core) to train a demo victim in about half a minute.
  'small-cnn': [8, 'M', 16, 'M', 32, 32],
  // The benchmark model of DESIGN.md: conv 3->32, 32->32, pool, 64, 64, pool, 128, global pool, linear.
  'small-cnn-32': [32, 32, 'M', 64, 64, 'M', 128],
};

export function buildPlainCnn(layers: PlainLayer[], inChannels: number, numClasses: number, rng: Rng): { root: Module; layout: ArchLayout } {
  const features: Module[] = [];
  let c = inChannels;
  const convEnds: number[] = [];
  let lastConv = 0;
  for (const l of layers) {
    if (l === 'M') {
      features.push(new MaxPool2d(2));
    } else {
      lastConv = features.length;
      features.push(new Conv2d(c, l, 3, { padding: 1 }, rng), new BatchNorm2d(l), new ReLU());
      convEnds.push(features.length - 1);
      c = l;
    }
  }
  const root = new Sequential([]);
  root.addChild('features', new Sequential(features));
  root.addChild('pool', new GlobalAvgPool());
  root.addChild('classifier', new Linear(c, numClasses, rng));
  root.finalize();
  // NAD's taps: the outputs of the last two conv stages and the pooled feature.
  const stages = convEnds.slice(-2).map((i) => `features.${i}`);
  return { root, layout: { feature: 'pool', head: 'classifier', stages: [...stages, 'pool'], lastBlockConv: `features.${lastConv}` } };
}
