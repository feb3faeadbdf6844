/**
 * BackdoorBench's PreAct-ResNet18 (models/preact_resnet.py), at any width, input channels and classes.
 * State_dict keys: conv1, layer1..layer4 (2 PreActBlocks each: bn1, conv1, bn2, conv2, shortcut.0), linear.
 * There is no BN after the last block: the pooled output of layer4 feeds the linear head directly.
 */
import * as tf from '@tensorflow/tfjs-core';
import { BatchNorm2d, Conv2d, GlobalAvgPool, Linear, Sequential } from '../nn/layers';
import { ForwardContext, Module } from '../nn/module';
import type { ArchLayout } from '../nn/model';
import type { Rng } from '../util/rng';

class PreActBlock extends Module {
  readonly kind = 'PreActBlock';
  readonly bn1: BatchNorm2d;
  readonly conv1: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly conv2: Conv2d;
  readonly shortcut?: Sequential;

  constructor(inPlanes: number, planes: number, stride: number, rng: Rng) {
    super();
    this.bn1 = this.addChild('bn1', new BatchNorm2d(inPlanes));
    this.conv1 = this.addChild('conv1', new Conv2d(inPlanes, planes, 3, { stride, padding: 1, bias: false }, rng));
    this.bn2 = this.addChild('bn2', new BatchNorm2d(planes));
    this.conv2 = this.addChild('conv2', new Conv2d(planes, planes, 3, { stride: 1, padding: 1, bias: false }, rng));
    if (stride !== 1 || inPlanes !== planes) {
      this.shortcut = this.addChild('shortcut', new Sequential([new Conv2d(inPlanes, planes, 1, { stride, bias: false }, rng)]));
    }
  }

  protected forwardImpl(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    const out = tf.relu(this.bn1.forward(x, ctx));
    const shortcut = this.shortcut ? this.shortcut.forward(out, ctx) : x;
    const h = this.conv1.forward(out, ctx);
    const y = this.conv2.forward(tf.relu(this.bn2.forward(h, ctx)), ctx);
    return tf.add(y, shortcut);
  }
}

class PreActResNet extends Module {
  readonly kind = 'PreActResNet18';
  constructor(inChannels: number, width: number, numClasses: number, rng: Rng) {
    super();
    this.addChild('conv1', new Conv2d(inChannels, width, 3, { stride: 1, padding: 1, bias: false }, rng));
    let inPlanes = width;
    [1, 2, 4, 8].forEach((mult, i) => {
      const planes = width * mult;
      const stride = i === 0 ? 1 : 2;
      const layer = new Sequential([new PreActBlock(inPlanes, planes, stride, rng), new PreActBlock(planes, planes, 1, rng)]);
      this.addChild(`layer${i + 1}`, layer);
      inPlanes = planes;
    });
    this.addChild('avgpool', new GlobalAvgPool());
    this.addChild('linear', new Linear(inPlanes, numClasses, rng));
  }

  protected forwardImpl(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    for (const c of this.children.values()) x = c.forward(x, ctx);
    return x;
  }
}

export function buildPreActResNet18(inChannels: number, numClasses: number, width: number, rng: Rng): { root: Module; layout: ArchLayout } {
  return {
    root: new PreActResNet(inChannels, width, numClasses, rng).finalize(),
    layout: { feature: 'avgpool', head: 'linear', stages: ['layer3', 'layer4', 'avgpool'], lastBlockConv: 'layer4.1.conv1' },
  };
}
