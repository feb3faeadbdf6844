/**
 * Model files in and out, by format. The architecture travels with the file where the format allows
 * (safetensors metadata we wrote); other state_dicts are matched by name and shape (models/detect), and the
 * job can name the architecture, input shape and classes instead.
 */
import * as path from 'node:path';
import type { Model } from '../nn/model';
import type { Results } from '../../shared/results';
import type { Job } from '../job_schema';
import { ARCHITECTURES, buildModel } from '../models';
import { detectArchitecture, requireArchitecture, stripDataParallel } from '../models/detect';
import { InputError } from '../errors';
import { decodeSafetensors, writeSafetensors } from '../formats/safetensors';
import { openPtArchive, readStateDict, writePt } from '../formats/pt';
import { isBackdoorBenchRoot, readBackdoorBenchArchive, type BackdoorBenchRecord } from '../formats/backdoorbench';
import { writeOnnx } from './onnx_export';
import { readOnnx } from '../formats/onnx';
import { onnxNumClasses } from '../models/onnx_graph';
import { readTfjs } from '../formats/tfjs';
import { tfjsArtifactsOf } from './tfjs_export';
import { writeFileAtomic } from '../util/atomic';
import type { Module, PtStateDict } from '../nn/module';
import { BatchNorm2d, Conv2d, Linear, Sequential } from '../nn/layers';
import { Rng } from '../util/rng';
import * as fs from 'node:fs';

export type ModelFormat = 'pt' | 'safetensors' | 'onnx' | 'tfjs';

/** File extension (or name) each format is written with. */
export const FORMAT_EXT: Record<ModelFormat, string> = { pt: 'pt', safetensors: 'safetensors', onnx: 'onnx', tfjs: 'json' };

/** Write `model` to `file` in `format`; returns the path written. */
export async function saveModelFile(model: Model, file: string, format: ModelFormat): Promise<string> {
  if (format === 'pt') {
    writePt(await model.stateDict(), file);
    return file;
  }
  if (format === 'safetensors') {
    // An imported graph cannot be rebuilt from metadata: its weights are written without an architecture, so
    // reading them back goes through detection (PyTorch names survive an unfolded ONNX export) or the job.
    const graph = model.spec.arch === 'onnx' || model.spec.arch === 'tfjs';
    writeSafetensors(await model.stateDict(), file, {
      format: 'pt',
      ...(graph
        ? {}
        : {
            arch: model.spec.arch,
            inputShape: JSON.stringify(model.spec.inputShape),
            numClasses: String(model.spec.numClasses),
            options: JSON.stringify(model.spec.options ?? {}),
          }),
      normalize: JSON.stringify(model.normalize ?? null),
    });
    return file;
  }
  if (format === 'onnx') {
    await writeOnnx(model, file);
    return file;
  }
  if (format === 'tfjs') {
    await writeTfjs(model, file);
    return file;
  }
  throw new Error(`writing ${format} models is not supported yet (${path.basename(file)})`);
}

/** The format a model path implies, or undefined. */
export function modelFormatOf(file: string): ModelFormat | undefined {
  const ext = path.extname(file).toLowerCase();
  if (ext === '.pt' || ext === '.pth') return 'pt';
  if (ext === '.safetensors') return 'safetensors';
  if (ext === '.onnx') return 'onnx';
  if (ext === '.json') return 'tfjs';
  return undefined;
}

function parseJson<T>(s: string | undefined): T | undefined {
  try {
    return s ? (JSON.parse(s) as T) : undefined;
  } catch {
    return undefined;
  }
}

export interface LoadedModel {
  model: Model;
  info: Results['model'];
  /** False when the network pools globally and neither the file nor the job records its input size. */
  inputSizeKnown: boolean;
  /** Set when the file is a BackdoorBench attack record: its metadata and poisoned test set. */
  record?: BackdoorBenchRecord;
}

function readModelBytes(file: string): Uint8Array {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new InputError(`cannot read the checkpoint: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, file);
  }
}

/**
 * The victim of a BackdoorBench record: architecture from `model_name` (and the state_dict's keys), input shape
 * from `img_size`, classes from `num_classes`, normalization from `clean_data`; the job's model fields win.
 */
function loadRecordModel(record: BackdoorBenchRecord, spec: Exclude<Job['model'], string>, where: string): LoadedModel {
  const sd = stripDataParallel(record.stateDict as unknown as PtStateDict);
  // Detection from the keys also finds the options (widths, blocks); model_name decides only where it cannot.
  const detected = detectArchitecture(sd);
  const ref = {
    ...spec,
    arch: spec.arch ?? (detected ? undefined : record.arch),
    inputShape: spec.inputShape ?? record.inputShape,
    numClasses: spec.numClasses ?? record.numClasses,
    normalize: spec.normalize ?? record.normalize,
  };
  if (!ref.arch && !detected) {
    throw new InputError(`the attack record's model_name "${record.modelName}" is not an architecture this version builds (known: ${ARCHITECTURES.join(', ')}); export the model to ONNX`, where);
  }
  const loaded = modelFromStateDict(sd, {}, ref, 'pt', spec.path, where);
  return { ...loaded, record };
}

/**
 * Load a model named by a job. Safetensors files we wrote carry their architecture in the metadata; other
 * state_dicts are recognized by their keys and shapes, and the job's `arch`, `inputShape` and `numClasses`
 * win over both.
 */
export function loadModelFile(ref: Job['model'], where: string): LoadedModel {
  const spec = typeof ref === 'string' ? { path: ref } : ref;
  const file = spec.path;
  const format = modelFormatOf(file);
  if (format === 'onnx') return loadOnnxModel(spec, where);
  if (format === 'tfjs') return loadTfjsModel(spec, where);
  if (format !== 'pt' && format !== 'safetensors') {
    throw new InputError(`reading ${path.extname(file) || path.basename(file)} models is not supported yet (supported: .safetensors, .pt, .pth, .onnx, TensorFlow.js model.json)`, where);
  }
  let sd: PtStateDict;
  let meta: Record<string, string> = {};
  if (format === 'pt') {
    const archive = openPtArchive(readModelBytes(file), file);
    // A BackdoorBench attack record: the victim, what it was trained on, and its poisoned test set.
    if (isBackdoorBenchRoot(archive.root)) return loadRecordModel(readBackdoorBenchArchive(archive), spec, where);
    sd = readStateDict(archive).stateDict as unknown as PtStateDict;
  } else {
    const st = decodeSafetensors(new Uint8Array(fs.readFileSync(file)), file);
    sd = st.stateDict as unknown as PtStateDict;
    meta = st.metadata;
  }
  return modelFromStateDict(stripDataParallel(sd), meta, spec, format, file, where);
}

/**
 * Modules a defense inserted (NPD's polarizer) are saved under `<target>.inserted[.<i>].*`. Rebuild them from
 * their parameters: a 4-D weight is a convolution (same padding), running statistics a BatchNorm, a 2-D weight
 * a Linear layer. Parameter-free layers leave no trace, so indices must be contiguous.
 */
function restoreInsertions(model: Model, sd: PtStateDict, where: string): void {
  const groups = new Map<string, Map<number, Map<string, number[]>>>();
  for (const [k, t] of sd) {
    const m = /^(.+)\.inserted\.(?:(\d+)\.)?([A-Za-z_]+)$/.exec(k);
    if (!m) continue;
    const idx = m[2] === undefined ? -1 : Number(m[2]);
    const g = groups.get(m[1]) ?? new Map<number, Map<string, number[]>>();
    groups.set(m[1], g);
    const layer = g.get(idx) ?? new Map<string, number[]>();
    g.set(idx, layer);
    layer.set(m[3], t.shape);
  }
  for (const [target, layers] of groups) {
    if (!model.root.find(target)) throw new InputError(`${target}.inserted.* has no module ${target} to sit in front of`, where);
    const idx = [...layers.keys()].sort((a, b) => a - b);
    if (idx[0] !== -1 && idx.some((v, i) => v !== i)) {
      throw new InputError(`the module inserted before ${target} has layers without parameters (indices ${idx.join(', ')}), which a state_dict cannot describe: write the model to ONNX`, where);
    }
    const build = (p: Map<string, number[]>): Module => {
      const w = p.get('weight');
      if (p.has('running_mean')) return new BatchNorm2d(p.get('running_mean')![0]);
      if (w && w.length === 4) return new Conv2d(w[1], w[0], w[2], { padding: (w[2] - 1) >> 1, bias: p.has('bias') }, new Rng(0));
      if (w && w.length === 2) return new Linear(w[1], w[0], new Rng(0), p.has('bias'));
      throw new InputError(`cannot tell what layer was inserted before ${target} from its parameters (${[...p.keys()].join(', ')})`, where);
    };
    model.insertBefore(target, () => (idx[0] === -1 ? build(layers.get(-1)!) : new Sequential(idx.map((i) => build(layers.get(i)!)))));
  }
}

/**
 * Give a size-agnostic model (global pooling, size not fixed by the file or job) the data's image size, so the
 * job checks, triggers and reports use it. Channels must still match.
 */
export function adoptInputSize(loaded: LoadedModel, dataShape: readonly number[]): void {
  const s = loaded.model.spec;
  if (loaded.inputSizeKnown || dataShape.length !== 3 || dataShape[2] !== s.inputShape[2]) return;
  s.inputShape = [dataShape[0], dataShape[1], s.inputShape[2]];
  loaded.info.inputShape = s.inputShape;
  loaded.inputSizeKnown = true;
}

/** Build the model a state_dict belongs to (metadata, detection or the job's names) and load it. */
export function modelFromStateDict(sd: PtStateDict, meta: Record<string, string>, ref: Exclude<Job['model'], string>, format: ModelFormat, file: string, where: string): LoadedModel {
  let arch = ref.arch ?? meta.arch;
  let options = parseJson<Record<string, unknown>>(meta.options);
  let inputShape = ref.inputShape ?? parseJson<[number, number, number]>(meta.inputShape);
  let numClasses = ref.numClasses ?? (meta.numClasses ? Number(meta.numClasses) : undefined);
  let inputSizeKnown = !!inputShape;
  if (!meta.arch) {
    // Named in the job: detection still supplies the options (width, blocks...) when it agrees.
    const detected = ref.arch && ref.inputShape && ref.numClasses ? undefined : requireArchitecture(sd, where);
    if (detected && (!ref.arch || ref.arch === detected.arch)) {
      arch = detected.arch;
      options = detected.options;
      inputShape = ref.inputShape ?? detected.inputShape;
      numClasses = ref.numClasses ?? detected.numClasses;
      inputSizeKnown = !!ref.inputShape || detected.inputSizeKnown;
    }
  }
  if (!arch || !inputShape || !numClasses) {
    throw new InputError(`the model file does not say its ${!arch ? 'architecture' : !inputShape ? 'input shape' : 'class count'}: name "arch", "inputShape" and "numClasses" in the job's model field`, where);
  }
  const normalize = ref.normalize ?? parseJson<{ mean: number[]; std: number[] } | null>(meta.normalize) ?? undefined;
  const model = buildModel({ arch, inputShape, numClasses, options }, normalize);
  try {
    restoreInsertions(model, sd, where);
    model.loadStateDict(sd, file);
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, info: { path: file, format, arch, params: model.paramCount(), inputShape, numClasses }, inputSizeKnown };
}

/** An ONNX file: the graph imported op by op; the job may give the input size when the file leaves it symbolic. */
function loadOnnxModel(ref: Exclude<Job['model'], string>, where: string): LoadedModel {
  const file = ref.path;
  const plan = readOnnx(file);
  const [, c, h, w] = plan.inputDims;
  const meta = plan.metadata;
  const fromFile: [number, number, number] | undefined = c > 0 && h > 0 && w > 0 ? [h, w, c] : undefined;
  const inputShape = ref.inputShape ?? fromFile;
  if (!inputShape) throw new InputError(`the ONNX input ${plan.inputName} has a symbolic size [${plan.inputDims.map((d) => (d < 0 ? '?' : d))}]: name "inputShape" ([H, W, C]) in the job's model field`, where);
  if (c > 0 && inputShape[2] !== c) throw new InputError(`the job says ${inputShape[2]} input channels but the ONNX graph takes ${c}`, where);
  const normalize = ref.normalize ?? parseJson<{ mean: number[]; std: number[] } | null>(meta['backdoor-audit.normalize']) ?? undefined;
  // The class count is the graph's; build once to learn it, then the model is rebuilt the same way for clones.
  const model = buildModel({ arch: 'onnx', inputShape, numClasses: 0, options: { plan } }, normalize);
  const numClasses = onnxNumClasses(model.root);
  (model.spec as { numClasses: number }).numClasses = numClasses;
  if (ref.numClasses && ref.numClasses !== numClasses) {
    model.dispose();
    throw new InputError(`the job says ${ref.numClasses} classes but the ONNX graph gives ${numClasses}`, where);
  }
  return { model, info: { path: file, format: 'onnx', arch: 'onnx', params: model.paramCount(), inputShape, numClasses }, inputSizeKnown: !!fromFile || !!ref.inputShape };
}

/** A TensorFlow.js layers model (model.json + weight shards). */
function loadTfjsModel(ref: Exclude<Job['model'], string>, where: string): LoadedModel {
  const file = ref.path;
  const plan = readTfjs(file);
  const [h, w, c] = plan.inputShape;
  const fromFile: [number, number, number] | undefined = h > 0 && w > 0 && c > 0 ? [h, w, c] : undefined;
  const inputShape = ref.inputShape ?? fromFile;
  if (!inputShape) throw new InputError(`the model input has a symbolic size [${plan.inputShape.map((d) => (d < 0 ? '?' : d))}]: name "inputShape" ([H, W, C]) in the job's model field`, where);
  if (c > 0 && inputShape[2] !== c) throw new InputError(`the job says ${inputShape[2]} input channels but the model takes ${c}`, where);
  const ours = (plan.json.userDefinedMetadata as { backdoorAudit?: { normalize?: { mean: number[]; std: number[] } | null } } | undefined)?.backdoorAudit;
  const model = buildModel({ arch: 'tfjs', inputShape, numClasses: 0, options: { plan } }, ref.normalize ?? ours?.normalize ?? undefined);
  const numClasses = model.head().outFeatures;
  (model.spec as { numClasses: number }).numClasses = numClasses;
  if (ref.numClasses && ref.numClasses !== numClasses) {
    model.dispose();
    throw new InputError(`the job says ${ref.numClasses} classes but the model gives ${numClasses}`, where);
  }
  return { model, info: { path: file, format: 'tfjs', arch: 'tfjs', params: model.paramCount(), inputShape, numClasses }, inputSizeKnown: !!fromFile || !!ref.inputShape };
}

/** model.json and its one weight shard (`<name>.weights.bin`) side by side. */
async function writeTfjs(model: Model, file: string): Promise<void> {
  const shard = `${path.basename(file).replace(/\.json$/i, '')}.weights.bin`;
  const { json, bin } = await tfjsArtifactsOf(model, shard);
  writeFileAtomic(path.join(path.dirname(file), shard), bin);
  writeFileAtomic(file, JSON.stringify(json));
}
