/**
 * Architecture registry: build a model from an ArchSpec. Weights start from a seeded PyTorch-style init.
 */
import { Model, type ArchSpec, type Normalization } from '../nn/model';
import { Rng } from '../util/rng';
import { InputError } from '../errors';
import { buildPreActResNet18 } from './preact_resnet18';
import { PLAIN_CNNS, buildPlainCnn, type PlainLayer } from './plain_cnn';

export const ARCHITECTURES = ['preact-resnet18', ...Object.keys(PLAIN_CNNS), 'plain-cnn'];

export function buildModel(spec: ArchSpec, normalize?: Normalization, seed = 0): Model {
  const [, , inC] = spec.inputShape;
  const rng = new Rng(seed);
  let built;
  if (spec.arch === 'preact-resnet18') {
    built = buildPreActResNet18(inC, spec.numClasses, Number(spec.options?.width ?? 64), rng);
  } else if (spec.arch in PLAIN_CNNS) {
    built = buildPlainCnn(PLAIN_CNNS[spec.arch], inC, spec.numClasses, rng);
  } else if (spec.arch === 'plain-cnn' && Array.isArray(spec.options?.layers)) {
    built = buildPlainCnn(spec.options!.layers as PlainLayer[], inC, spec.numClasses, rng);
  } else {
    throw new InputError(`unknown architecture "${spec.arch}" (known: ${ARCHITECTURES.join(', ')})`, 'arch');
  }
  return new Model(spec, built.root, built.layout, normalize, () => buildModel(spec, normalize, seed));
}
