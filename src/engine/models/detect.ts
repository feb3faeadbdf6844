/**
 * Architecture from a state_dict's names and shapes (a state_dict has no graph). Recognized: BackdoorBench's
 * PreAct-ResNet18, post-activation BasicBlock ResNets (torchvision's resnet18/34 and the CIFAR variant) and
 * torchvision-layout VGG with or without BN, each at any width, input channels and class count.
 *
 * What the keys cannot say is assumed the way the source code does it and reported as such: ReLU and pooling
 * leave no trace, so VGG's feature stack is taken to end with a max pool (every torchvision configuration
 * does), a ResNet with a 3x3 stem is the CIFAR variant without the stem's max pool, and networks that end in
 * a global average pool accept any input size (`inputSizeKnown: false`; the nominal size is the source's).
 */
import type { ArchSpec } from '../nn/model';
import { InputError } from '../errors';
import type { VggOptions } from './vgg';
import type { ResNetOptions } from './resnet';

interface Shaped {
  shape: readonly number[];
}
type Keys = ReadonlyMap<string, Shaped>;

export interface Detected extends ArchSpec {
  /** False when the network pools globally, so the input size is the source's convention, not a fact. */
  inputSizeKnown: boolean;
}

/** A DataParallel / DistributedDataParallel state_dict has every key under `module.`; drop it. */
export function stripDataParallel<T>(sd: ReadonlyMap<string, T>): Map<string, T> {
  const keys = [...sd.keys()];
  if (!keys.length || !keys.every((k) => k.startsWith('module.'))) return new Map(sd);
  return new Map(keys.map((k) => [k.slice('module.'.length), sd.get(k)!]));
}

/** The architecture of `sd`, or undefined when nothing matches. */
export function detectArchitecture(sd: Keys): Detected | undefined {
  return detectPreAct(sd) ?? detectResNet(sd) ?? detectVgg(sd);
}

/** The architecture of `sd`; no match is an InputError with the first unmatched keys and the ways out. */
export function requireArchitecture(sd: Keys, where?: string): Detected {
  const d = detectArchitecture(sd);
  if (d) return d;
  const keys = [...sd.keys()].filter((k) => !k.endsWith('num_batches_tracked'));
  throw new InputError(
    `no known architecture matches this state_dict (first unmatched keys: ${keys.slice(0, 5).join(', ')}${keys.length > 5 ? ', ...' : ''}); ` +
      'a state_dict holds no ReLU or pooling layers, so name "arch", "inputShape" and "numClasses" in the job\'s model field, or export the model to ONNX (torch.onnx.export) and give the .onnx file',
    where,
  );
}

const shapeOf = (sd: Keys, k: string): readonly number[] | undefined => sd.get(k)?.shape;

function blockCounts(sd: Keys): number[] {
  const counts: number[] = [];
  for (let i = 1; sd.has(`layer${i}.0.conv1.weight`); i++) {
    let n = 0;
    while (sd.has(`layer${i}.${n}.conv1.weight`)) n++;
    counts.push(n);
  }
  return counts;
}

function detectPreAct(sd: Keys): Detected | undefined {
  const conv1 = shapeOf(sd, 'conv1.weight');
  const linear = shapeOf(sd, 'linear.weight');
  if (!conv1 || conv1.length !== 4 || !linear || linear.length !== 2 || sd.has('bn1.weight')) return undefined;
  if (!sd.has('layer1.0.bn1.weight') || !sd.has('layer4.1.conv2.weight')) return undefined;
  if (blockCounts(sd).join() !== '2,2,2,2') return undefined;
  return {
    arch: 'preact-resnet18',
    inputShape: [32, 32, conv1[1]],
    numClasses: linear[0],
    options: { width: conv1[0] },
    inputSizeKnown: false,
  };
}

function detectResNet(sd: Keys): Detected | undefined {
  const conv1 = shapeOf(sd, 'conv1.weight');
  const head = sd.has('fc.weight') ? 'fc' : sd.has('linear.weight') ? 'linear' : undefined;
  if (!conv1 || conv1.length !== 4 || !head || !sd.has('bn1.weight') || !sd.has('layer1.0.bn2.weight')) return undefined;
  // A Bottleneck ResNet (50 and up) has conv3 in every block; those are not built here.
  if (sd.has('layer1.0.conv3.weight')) return undefined;
  const blocks = blockCounts(sd);
  const k = conv1[2];
  if (k !== 7 && k !== 3) return undefined;
  const keys = [...sd.keys()];
  const shortcut = keys.some((key) => /^layer\d+\.\d+\.shortcut\./.test(key)) ? 'shortcut' : 'downsample';
  const stem = k === 7 ? 'imagenet' : 'cifar';
  const options: ResNetOptions = { width: conv1[0], blocks, stem, shortcut, head };
  const depth = 2 + 2 * blocks.reduce((a, b) => a + b, 0);
  const size = stem === 'imagenet' ? 224 : 32;
  return { arch: `resnet${depth}`, inputShape: [size, size, conv1[1]], numClasses: shapeOf(sd, `${head}.weight`)![0], options: { ...options }, inputSizeKnown: false };
}

function indexed(sd: Keys, prefix: string, rank: number): number[] {
  const re = new RegExp(`^${prefix}\\.(\\d+)\\.weight$`);
  const out: number[] = [];
  for (const [k, v] of sd) {
    const m = re.exec(k);
    if (m && v.shape.length === rank) out.push(Number(m[1]));
  }
  return out.sort((a, b) => a - b);
}

function detectVgg(sd: Keys): Detected | undefined {
  const convs = indexed(sd, 'features', 4);
  const linears = indexed(sd, 'classifier', 2);
  if (!convs.length || !linears.length) return undefined;
  const batchNorm = sd.has(`features.${convs[0] + 1}.running_mean`);
  const unit = batchNorm ? 3 : 2; // conv [+ BN] + ReLU
  const cfg: Array<number | 'M'> = [];
  let next = 0; // index the next layer would have
  for (const i of convs) {
    const gap = i - next;
    if (gap < 0) return undefined;
    for (let p = 0; p < gap; p++) cfg.push('M');
    if (batchNorm !== sd.has(`features.${i + 1}.running_mean`)) return undefined;
    cfg.push(shapeOf(sd, `features.${i}.weight`)![0]);
    next = i + unit;
  }
  cfg.push('M');
  const pools = cfg.filter((v) => v === 'M').length;
  // Classifier: Linear, then ReLU (+ Dropout) between Linear layers.
  const gaps = linears.slice(1).map((l, j) => l - linears[j]);
  if (linears[0] !== 0 || gaps.some((g) => g !== gaps[0] || (g !== 2 && g !== 3))) return undefined;
  const lin = linears.map((i) => shapeOf(sd, `classifier.${i}.weight`)!);
  const lastC = cfg.filter((v): v is number => v !== 'M').pop()!;
  const inF = lin[0][1];
  let avgpool = 0;
  let size: number;
  let inputSizeKnown = true;
  if (inF === lastC * 49) {
    avgpool = 7;
    size = 224;
    inputSizeKnown = false;
  } else {
    const s = Math.round(Math.sqrt(inF / lastC));
    if (s * s * lastC !== inF) return undefined;
    size = s * 2 ** pools;
  }
  const options: VggOptions = { cfg, batchNorm, avgpool, hidden: lin.slice(0, -1).map((s) => s[0]), dropout: gaps[0] === 3 };
  const depth = convs.length + linears.length;
  const inC = shapeOf(sd, `features.${convs[0]}.weight`)![1];
  return { arch: `vgg${depth}${batchNorm ? '-bn' : ''}`, inputShape: [size, size, inC], numClasses: lin[lin.length - 1][0], options: { ...options }, inputSizeKnown };
}
