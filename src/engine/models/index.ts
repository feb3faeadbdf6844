/**
 * Architecture registry: build a model from an ArchSpec. Weights start from a seeded PyTorch-style init.
 */
import { Model, type ArchSpec, type Normalization } from '../nn/model';
import { Rng } from '../util/rng';
import { InputError } from '../errors';
import { buildPreActResNet18 } from './preact_resnet18';
import { PLAIN_CNNS, buildPlainCnn, type PlainLayer } from './plain_cnn';
import { buildResNet, type ResNetOptions } from './resnet';
import { VGG_CFGS, buildVgg, type VggOptions } from './vgg';
import { buildOnnxGraph } from './onnx_graph';
import { buildTfjsGraph } from './tfjs_graph';
import type { TfjsPlan } from '../formats/tfjs';
import type { OnnxPlan } from '../formats/onnx';

export const ARCHITECTURES = ['preact-resnet18', 'resnet18', 'resnet34', 'vgg11-bn', 'vgg13-bn', 'vgg16-bn', 'vgg19-bn', ...Object.keys(PLAIN_CNNS), 'plain-cnn'];

const RESNET_BLOCKS: Record<string, number[]> = { resnet18: [2, 2, 2, 2], resnet34: [3, 4, 6, 3] };

export function buildModel(spec: ArchSpec, normalize?: Normalization, seed = 0): Model {
  const [h, w, inC] = spec.inputShape;
  const rng = new Rng(seed);
  const opts = spec.options ?? {};
  let built;
  let m: RegExpExecArray | null;
  if (spec.arch === 'onnx' && opts.plan) {
    built = buildOnnxGraph(opts.plan as OnnxPlan, spec.inputShape);
  } else if (spec.arch === 'tfjs' && opts.plan) {
    built = buildTfjsGraph(opts.plan as TfjsPlan, spec.inputShape);
  } else if (spec.arch === 'preact-resnet18') {
    built = buildPreActResNet18(inC, spec.numClasses, Number(opts.width ?? 64), rng);
  } else if (spec.arch in RESNET_BLOCKS || (/^resnet\d+$/.test(spec.arch) && Array.isArray(opts.blocks))) {
    built = buildResNet(inC, spec.numClasses, { blocks: RESNET_BLOCKS[spec.arch], ...(opts as Partial<ResNetOptions>) }, rng);
  } else if ((m = /^vgg(\d+)(-bn)?$/.exec(spec.arch)) && (Array.isArray(opts.cfg) || Number(m[1]) in VGG_CFGS)) {
    built = buildVgg(inC, spec.numClasses, [h, w], { cfg: VGG_CFGS[Number(m[1])], batchNorm: !!m[2], ...(opts as Partial<VggOptions>) }, rng);
  } else if (spec.arch in PLAIN_CNNS) {
    built = buildPlainCnn(PLAIN_CNNS[spec.arch], inC, spec.numClasses, rng);
  } else if (spec.arch === 'plain-cnn' && Array.isArray(opts.layers)) {
    built = buildPlainCnn(opts.layers as PlainLayer[], inC, spec.numClasses, rng);
  } else {
    throw new InputError(`unknown architecture "${spec.arch}" (known: ${ARCHITECTURES.join(', ')})`, 'arch');
  }
  return new Model(spec, built.root, built.layout, normalize, () => buildModel(spec, normalize, seed));
}
