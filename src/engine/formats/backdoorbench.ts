/**
 * BackdoorBench attack records (`attack_result.pt`, written by SCLBD/BackdoorBench's utils/save_load_attack.py):
 * the bridge its attacks hand to its defenses, and the file an auditor of a BackdoorBench victim actually has.
 * One torch.save dict holds the victim (`model_name`, `num_classes`, the `model` state_dict), the data set it was
 * trained on (`clean_data`, `img_size`) and the poisoned test set (`bd_test`). Opening one gives the model (its
 * architecture from `model_name`, its input normalization from `clean_data`, as BackdoorBench normalizes) and
 * `bd_test` as the poisoned set that measures ASR.
 *
 * Layouts: the earlier one keeps `bd_test` as tensors, `x` N,C,H,W float in 0..255 and `y` the attack labels
 * (no true labels), and `bd_train.original_index` as a numpy array (read as data by the restricted unpickler).
 * The current one keeps `bd_test` as a dataset state (`bd_data_container.data_dict`: original index, a numpy.int64,
 * -> the path of a PNG under `bd_test_dataset/<label>/` next to the record, plus the attack label and the true label;
 * fixture: scripts/make-record-fixture.py); its images
 * are read from those files, found relative to the record's folder (the saved paths are the attacker's). A
 * container that kept its images in memory holds pickled PIL images, which the restricted unpickler refuses.
 *
 * Nothing here runs code from the file: the pickle is parsed by pickle.ts and every tensor read by pt.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError } from '../errors';
import { NpArray, PyDict, PyTuple, TensorRef, type PyValue } from './pickle';
import { asTensorDict, openPtArchive, readTensors, type PtArchive } from './pt';
import type { StateDict, TensorArray } from './state_dict';
import { decodePng } from './data/imagefolder';

/** BackdoorBench's `model_name` -> our architecture (others are recognized by their keys, or refused). */
const ARCH_OF_MODEL_NAME: Record<string, string> = {
  preactresnet18: 'preact-resnet18',
  resnet18: 'resnet18',
  resnet34: 'resnet34',
  vgg11: 'vgg11-bn',
  vgg16: 'vgg16-bn',
  vgg19: 'vgg19-bn',
  vgg19_bn: 'vgg19-bn',
};

/** BackdoorBench's input normalization per data set (its get_dataset_normalization). */
const NORMALIZATION: Record<string, { mean: number[]; std: number[] }> = {
  cifar10: { mean: [0.4914, 0.4822, 0.4465], std: [0.247, 0.243, 0.261] },
  cifar100: { mean: [0.5071, 0.4865, 0.4409], std: [0.2673, 0.2564, 0.2762] },
  mnist: { mean: [0.5], std: [0.5] },
  tiny: { mean: [0.4802, 0.4481, 0.3975], std: [0.2302, 0.2265, 0.2262] },
  gtsrb: { mean: [0, 0, 0], std: [1, 1, 1] },
  celeba: { mean: [0, 0, 0], std: [1, 1, 1] },
  imagenet: { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
};

/** The poisoned test set of a record: images NHWC in [0,1], the attack labels, and true labels where kept. */
export interface RecordPoisonedSet {
  n: number;
  shape: [number, number, number];
  x: Float32Array;
  attackLabels: Int32Array;
  trueLabels?: Int32Array;
}

export interface BackdoorBenchRecord {
  layout: 'tensors' | 'dataset-state';
  modelName: string;
  /** Our architecture for `model_name`, when it is one we build by name. */
  arch?: string;
  numClasses: number;
  /** [H, W, C] of the inputs (BackdoorBench's `img_size`). */
  inputShape?: [number, number, number];
  cleanData?: string;
  normalize?: { mean: number[]; std: number[] };
  stateDict: StateDict;
  /** Images in `bd_test`, and in `bd_train` (the poisoned training images it kept). */
  bdTestCount: number;
  bdTrainCount?: number;
  /** Reads `bd_test` (tens of megabytes for CIFAR-10: only when the job measures ASR). */
  poisonedSet(): RecordPoisonedSet;
}

const get = (d: PyDict, k: string): PyValue | undefined => d.map.get(k);

/** Whether an unpickled torch.save root is a BackdoorBench attack record. */
export function isBackdoorBenchRoot(root: PyValue): root is PyDict {
  return root instanceof PyDict && typeof get(root, 'model_name') === 'string' && get(root, 'bd_test') !== undefined && get(root, 'model') instanceof PyDict;
}

function int(v: PyValue | undefined, what: string, where: string): number {
  if (typeof v === 'number' && Number.isSafeInteger(v)) return v;
  throw new InputError(`the attack record's ${what} is not an integer`, where);
}

/** A record already opened (model_io opens every .pt once and asks whether it is a record). */
export function readBackdoorBenchArchive(archive: PtArchive): BackdoorBenchRecord {
  const where = archive.where;
  const root = archive.root as PyDict;
  const modelName = get(root, 'model_name') as string;
  const numClasses = int(get(root, 'num_classes'), 'num_classes', where);
  if (numClasses < 2) throw new InputError(`the attack record says ${numClasses} classes`, where);
  const sdDict = asTensorDict(get(root, 'model')!);
  if (!sdDict) throw new InputError("the attack record's model is not a state_dict of tensors", where);
  const stateDict = readTensors(archive, sdDict);
  const img = get(root, 'img_size');
  const dims = img instanceof PyTuple ? img.items : Array.isArray(img) ? img : undefined;
  let inputShape: [number, number, number] | undefined;
  if (dims && dims.length >= 2) {
    const [h, w, c = 3] = dims.map((v) => int(v, 'img_size', where));
    inputShape = [h, w, c];
  }
  const cleanData = typeof get(root, 'clean_data') === 'string' ? (get(root, 'clean_data') as string) : undefined;
  const normalize = cleanData ? NORMALIZATION[cleanData.toLowerCase()] : undefined;
  const bdTest = get(root, 'bd_test');
  if (!(bdTest instanceof PyDict)) throw new InputError("the attack record's bd_test is not a dict", where);
  const bdTrain = get(root, 'bd_train');
  const common = { modelName, arch: ARCH_OF_MODEL_NAME[modelName.toLowerCase()], numClasses, inputShape, cleanData, normalize, stateDict };

  if (get(bdTest, 'x') instanceof TensorRef) {
    const xRef = get(bdTest, 'x') as TensorRef;
    const yRef = get(bdTest, 'y');
    if (!(yRef instanceof TensorRef)) throw new InputError("the attack record's bd_test has images but no labels tensor y", where);
    if (xRef.shape.length !== 4) throw new InputError(`the attack record's bd_test.x has shape (${xRef.shape.join(',')}), expected N,C,H,W`, where);
    if (yRef.shape.length !== 1 || yRef.shape[0] !== xRef.shape[0]) throw new InputError(`the attack record's bd_test has ${xRef.shape[0]} images but ${yRef.shape.join('x')} labels`, where);
    let bdTrainCount: number | undefined;
    if (bdTrain instanceof PyDict) {
      const bx = get(bdTrain, 'x');
      const oi = get(bdTrain, 'original_index');
      if (bx instanceof TensorRef) bdTrainCount = bx.shape[0];
      else if (oi instanceof NpArray) bdTrainCount = oi.shape[0];
    }
    return {
      layout: 'tensors',
      ...common,
      bdTestCount: xRef.shape[0],
      bdTrainCount,
      poisonedSet: () => {
        const t = readTensors(archive, new Map([['x', xRef], ['y', yRef]]));
        return fromNchw255(t.get('x')!.data, xRef.shape, t.get('y')!.data, where);
      },
    };
  }

  const container = get(bdTest, 'bd_data_container');
  if (container instanceof PyDict && get(container, 'data_dict') instanceof PyDict) {
    const dataDict = get(container, 'data_dict') as PyDict;
    const recordDir = path.dirname(path.resolve(where));
    // bd_train in the same layout: its container's entries are the poisoned training images.
    const trainContainer = bdTrain instanceof PyDict ? get(bdTrain, 'bd_data_container') : undefined;
    const trainDict = trainContainer instanceof PyDict ? get(trainContainer, 'data_dict') : undefined;
    return {
      layout: 'dataset-state',
      ...common,
      bdTestCount: dataDict.map.size,
      bdTrainCount: trainDict instanceof PyDict ? trainDict.map.size : undefined,
      poisonedSet: () => fromDataDict(dataDict, recordDir, where),
    };
  }
  throw new InputError("the attack record's bd_test holds neither tensors x/y nor a dataset state with a data container", where);
}

/** Open `file` and read it as a record; undefined when it is a .pt of another kind. */
export function readBackdoorBenchRecord(file: string): BackdoorBenchRecord | undefined {
  const archive = openPtArchive(fs.readFileSync(file), file);
  return isBackdoorBenchRoot(archive.root) ? readBackdoorBenchArchive(archive) : undefined;
}

/** N,C,H,W float in 0..255 -> NHWC in [0,1]; labels as attack labels. */
function fromNchw255(x: TensorArray, shape: number[], y: TensorArray, where: string): RecordPoisonedSet {
  const [n, c, h, w] = shape;
  if (c !== 1 && c !== 3) throw new InputError(`the attack record's bd_test.x has ${c} channels (N,C,H,W expected, C 1 or 3)`, where);
  const out = new Float32Array(n * h * w * c);
  for (let i = 0; i < n; i++)
    for (let ch = 0; ch < c; ch++)
      for (let p = 0; p < h * w; p++) {
        const v = Number(x[(i * c + ch) * h * w + p]);
        if (!(v >= 0 && v <= 255)) throw new InputError(`the attack record's bd_test.x holds ${v} (image ${i}); BackdoorBench stores pixels in 0..255`, where);
        out[(i * h * w + p) * c + ch] = v / 255;
      }
  return { n, shape: [h, w, c], x: out, attackLabels: Int32Array.from(y as ArrayLike<number | bigint>, (v) => Number(v)) };
}

/** The current layout: one PNG per poisoned test image under bd_test_dataset/<true label>/<index>.png. */
function fromDataDict(dataDict: PyDict, recordDir: string, where: string): RecordPoisonedSet {
  const entries = [...dataDict.map].sort((a, b) => Number(a[0]) - Number(b[0]));
  if (entries.length === 0) throw new InputError("the attack record's bd_test is empty", where);
  const images: Float32Array[] = [];
  const attack: number[] = [];
  const truth: number[] = [];
  let shape: [number, number, number] | undefined;
  for (const [key, value] of entries) {
    if (!(value instanceof PyDict)) throw new InputError('the attack record keeps its poisoned test images in memory as pickled images, which are not read; save it with a save_folder_path', where);
    const p = get(value, 'path');
    const info = get(value, 'other_info');
    const labels = info instanceof PyTuple ? info.items : Array.isArray(info) ? info : [];
    if (typeof p !== 'string' || labels.length < 2) throw new InputError(`the attack record's bd_test entry ${String(key)} has no image path and labels`, where);
    // Saved as <save_path>/bd_test_dataset/<label>/<index>.png on the attacker's machine: take the tail.
    const parts = p.split(/[\\/]/);
    const at = parts.lastIndexOf('bd_test_dataset');
    if (at < 0 || parts.slice(at + 1).some((s) => s === '..' || s === '')) throw new InputError(`the attack record's bd_test image path ${JSON.stringify(p.slice(-80))} is not under bd_test_dataset/`, where);
    const file = path.join(recordDir, ...parts.slice(at));
    if (!fs.existsSync(file)) throw new InputError(`the attack record's poisoned test image ${path.relative(recordDir, file)} is missing (keep bd_test_dataset/ next to the record)`, where);
    const img = decodePng(fs.readFileSync(file), file);
    if (shape && img.shape.join() !== shape.join()) throw new InputError(`poisoned test images of different sizes (${file})`, where);
    shape = img.shape;
    images.push(img.data);
    attack.push(int(labels[0], 'bd_test attack label', where));
    truth.push(int(labels[1], 'bd_test true label', where));
  }
  const size = images[0].length;
  const x = new Float32Array(images.length * size);
  images.forEach((im, i) => x.set(im, i * size));
  return { n: images.length, shape: shape!, x, attackLabels: Int32Array.from(attack), trueLabels: Int32Array.from(truth) };
}
