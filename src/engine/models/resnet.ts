/**
 * Post-activation ResNets with BasicBlocks (torchvision's resnet18/resnet34 and the common CIFAR variant),
 * at any width, block counts, input channels and classes. Keys follow the source: torchvision names the
 * projection `downsample.0/1` and the head `fc`; the CIFAR code used by many backdoor papers names them
 * `shortcut.0/1` and `linear`. The ImageNet stem is conv 7x7/2 + BN + ReLU + max pool 3x3/2; the CIFAR stem
 * is conv 3x3/1 + BN + ReLU with no pooling.
 */
import * as tf from '@tensorflow/tfjs-core';
import { BatchNorm2d, Conv2d, GlobalAvgPool, Linear, MaxPool2d, ReLU, Sequential } from '../nn/layers';
import { ForwardContext, Module } from '../nn/module';
import type { ArchLayout } from '../nn/model';
import type { Rng } from '../util/rng';

export interface ResNetOptions {
  width: number;
  blocks: number[];
  stem: 'imagenet' | 'cifar';
  /** Name of the projection shortcut in each block. */
  shortcut: 'downsample' | 'shortcut';
  /** Name of the classification head. */
  head: 'fc' | 'linear';
}

export const RESNET18_DEFAULTS: ResNetOptions = { width: 64, blocks: [2, 2, 2, 2], stem: 'imagenet', shortcut: 'downsample', head: 'fc' };

export class BasicBlock extends Module {
  readonly kind = 'BasicBlock';
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly conv2: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly proj?: Sequential;

  constructor(inPlanes: number, planes: number, stride: number, shortcutName: string, rng: Rng) {
    super();
    this.conv1 = this.addChild('conv1', new Conv2d(inPlanes, planes, 3, { stride, padding: 1, bias: false }, rng));
    this.bn1 = this.addChild('bn1', new BatchNorm2d(planes));
    this.conv2 = this.addChild('conv2', new Conv2d(planes, planes, 3, { stride: 1, padding: 1, bias: false }, rng));
    this.bn2 = this.addChild('bn2', new BatchNorm2d(planes));
    if (stride !== 1 || inPlanes !== planes) {
      this.proj = this.addChild(shortcutName, new Sequential([new Conv2d(inPlanes, planes, 1, { stride, bias: false }, rng), new BatchNorm2d(planes)]));
    }
  }

  protected forwardImpl(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    const h = tf.relu(this.bn1.forward(this.conv1.forward(x, ctx), ctx));
    const y = this.bn2.forward(this.conv2.forward(h, ctx), ctx);
    const identity = this.proj ? this.proj.forward(x, ctx) : x;
    return tf.relu(tf.add(y, identity));
  }
}

class ResNet extends Module {
  readonly kind = 'ResNet';
  constructor(inChannels: number, numClasses: number, o: ResNetOptions, rng: Rng) {
    super();
    const w = o.width;
    if (o.stem === 'imagenet') {
      this.addChild('conv1', new Conv2d(inChannels, w, 7, { stride: 2, padding: 3, bias: false }, rng));
    } else {
      this.addChild('conv1', new Conv2d(inChannels, w, 3, { stride: 1, padding: 1, bias: false }, rng));
    }
    this.addChild('bn1', new BatchNorm2d(w));
    this.addChild('relu', new ReLU());
    if (o.stem === 'imagenet') this.addChild('maxpool', new MaxPool2d(3, 2, 1));
    let inPlanes = w;
    o.blocks.forEach((n, i) => {
      const planes = w * 2 ** i;
      const blocks: Module[] = [];
      for (let b = 0; b < n; b++) {
        blocks.push(new BasicBlock(inPlanes, planes, b === 0 && i > 0 ? 2 : 1, o.shortcut, rng));
        inPlanes = planes;
      }
      this.addChild(`layer${i + 1}`, new Sequential(blocks));
    });
    this.addChild('avgpool', new GlobalAvgPool());
    this.addChild(o.head, new Linear(inPlanes, numClasses, rng));
  }

  protected forwardImpl(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    for (const c of this.children.values()) x = c.forward(x, ctx);
    return x;
  }
}

export function buildResNet(inChannels: number, numClasses: number, options: Partial<ResNetOptions>, rng: Rng): { root: Module; layout: ArchLayout } {
  const o = { ...RESNET18_DEFAULTS, ...options };
  if (!o.blocks.length || o.blocks.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`bad ResNet block counts [${o.blocks}]`);
  const last = o.blocks.length;
  const stages = [...(last > 1 ? [`layer${last - 1}`] : []), `layer${last}`, 'avgpool'];
  return {
    root: new ResNet(inChannels, numClasses, o, rng).finalize(),
    layout: { feature: 'avgpool', head: o.head, stages, lastBlockConv: `layer${last}.${o.blocks[last - 1] - 1}.conv1` },
  };
}
