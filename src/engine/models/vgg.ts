/**
 * VGG in torchvision's layout: `features` (conv 3x3 pad 1 [+ BN] + ReLU per layer, 'M' = max pool 2x2),
 * an optional adaptive average pool, NCHW flatten, and `classifier` (Linear layers separated by ReLU and,
 * as in torchvision, Dropout). Module indices match torchvision's so state_dict keys load by name.
 */
import { AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential } from '../nn/layers';
import type { Module } from '../nn/module';
import type { ArchLayout } from '../nn/model';
import type { Rng } from '../util/rng';

export interface VggOptions {
  /** Output channels per conv layer, 'M' for a 2x2 max pool. */
  cfg: Array<number | 'M'>;
  batchNorm: boolean;
  /** Grid of the adaptive average pool before the classifier (torchvision: 7); 0 = none. */
  avgpool: number;
  /** Hidden widths of the classifier; each hidden Linear is followed by ReLU and, if `dropout`, Dropout. */
  hidden: number[];
  dropout: boolean;
}

/** torchvision's configurations by depth (conv layers + 3 Linear layers). */
export const VGG_CFGS: Record<number, Array<number | 'M'>> = {
  11: [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
  13: [64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
  16: [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'],
  19: [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M'],
};

export const VGG16_BN: VggOptions = {
  cfg: [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'],
  batchNorm: true,
  avgpool: 7,
  hidden: [4096, 4096],
  dropout: true,
};

export function buildVgg(inChannels: number, numClasses: number, inputSize: [number, number], options: Partial<VggOptions>, rng: Rng): { root: Module; layout: ArchLayout } {
  const o = { ...VGG16_BN, ...options };
  const features: Module[] = [];
  let c = inChannels;
  let [h, w] = inputSize;
  let lastConv = 0;
  const stageEnds: number[] = [];
  for (const v of o.cfg) {
    if (v === 'M') {
      features.push(new MaxPool2d(2, 2));
      stageEnds.push(features.length - 1);
      h = Math.floor(h / 2);
      w = Math.floor(w / 2);
    } else {
      lastConv = features.length;
      features.push(new Conv2d(c, v, 3, { padding: 1 }, rng));
      if (o.batchNorm) features.push(new BatchNorm2d(v));
      features.push(new ReLU());
      c = v;
    }
  }
  const root = new Sequential([]);
  root.addChild('features', new Sequential(features));
  if (o.avgpool > 0) {
    root.addChild('avgpool', new AdaptiveAvgPool2d(o.avgpool));
    h = w = o.avgpool;
  }
  root.addChild('flatten', new Flatten());
  const cls: Module[] = [];
  let inF = c * h * w;
  for (const hid of o.hidden) {
    cls.push(new Linear(inF, hid, rng), new ReLU());
    if (o.dropout) cls.push(new Dropout(0.5));
    inF = hid;
  }
  const headIdx = cls.length;
  cls.push(new Linear(inF, numClasses, rng));
  root.addChild('classifier', new Sequential(cls));
  root.finalize();
  const feature = headIdx > 0 ? `classifier.${headIdx - 1}` : 'flatten';
  const stages = [...stageEnds.slice(-2).map((i) => `features.${i}`), feature];
  return { root, layout: { feature, head: `classifier.${headIdx}`, stages, lastBlockConv: `features.${lastConv}` } };
}
