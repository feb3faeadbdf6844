/**
 * TensorFlow.js layers models: `model.json` (Keras topology + weights manifest) and its binary weight shards.
 * Shard paths must stay inside the model's folder; every shard's size is checked against the manifest before
 * anything is read, and quantized weights (uint8/uint16 with scale and min, float16) are widened to float32.
 * Nothing in the file runs: the topology is data interpreted by models/tfjs_graph.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError } from '../errors';
import { halfToFloat } from './state_dict';

export interface TfjsWeight {
  name: string;
  shape: number[];
  data: Float32Array;
}

/** One Keras layer, normalized from Sequential or functional topologies. */
export interface TfjsLayer {
  className: string;
  name: string;
  config: Record<string, unknown>;
  /** Names of the layers whose outputs feed this one (empty for the input layer). */
  inbound: string[];
}

export interface TfjsPlan {
  /** The parsed model.json, kept to write the topology back. */
  json: Record<string, unknown>;
  sequential: boolean;
  layers: TfjsLayer[];
  inputName: string;
  outputName: string;
  /** [H, W, C] from the input layer; unknown sizes as -1. */
  inputShape: number[];
  weights: Map<string, TfjsWeight>;
}

const MAX_JSON = 64 * 1024 * 1024;
const BYTES: Record<string, number> = { float32: 4, int32: 4, uint8: 1, uint16: 2, float16: 2, bool: 1 };

type Json = Record<string, unknown>;
const isObj = (v: unknown): v is Json => !!v && typeof v === 'object' && !Array.isArray(v);

/** The Keras topology object, whichever way the converter nested it. */
function topologyOf(json: Json, where: string): Json {
  let t = json.modelTopology;
  if (isObj(t) && isObj(t.model_config)) t = t.model_config;
  if (!isObj(t) || typeof t.class_name !== 'string') {
    if (json.format === 'graph-model' || (isObj(json.modelTopology) && 'node' in json.modelTopology)) {
      throw new InputError('TensorFlow.js graph models (converted from SavedModel) are not supported; convert the Keras model as a layers model', where);
    }
    throw new InputError('not a TensorFlow.js layers model (no modelTopology with a class_name)', where);
  }
  return t;
}

function inputShapeOf(cfg: Json): number[] | undefined {
  const s = (cfg.batch_input_shape ?? cfg.batch_shape) as unknown;
  if (Array.isArray(s)) return s.slice(1).map((v) => (typeof v === 'number' ? v : -1));
  if (Array.isArray(cfg.input_shape)) return (cfg.input_shape as unknown[]).map((v) => (typeof v === 'number' ? v : -1));
  return undefined;
}

function layersOf(topology: Json, where: string): Omit<TfjsPlan, 'json' | 'weights'> {
  const cfg = topology.config;
  const cls = topology.class_name;
  const raw = (Array.isArray(cfg) ? cfg : isObj(cfg) ? cfg.layers : undefined) as unknown;
  if (!Array.isArray(raw) || !raw.length) throw new InputError(`the ${String(cls)} topology lists no layers`, where);
  const layers: TfjsLayer[] = [];
  const sequential = cls === 'Sequential';
  let inputShape: number[] | undefined;
  for (const [i, l] of raw.entries()) {
    if (!isObj(l) || typeof l.class_name !== 'string' || !isObj(l.config)) throw new InputError(`layer ${i} is not a {class_name, config} object`, where);
    const name = String(l.config.name ?? l.name ?? `layer_${i}`);
    if (l.class_name === 'Sequential' || l.class_name === 'Model' || l.class_name === 'Functional') {
      throw new InputError(`nested models (layer "${name}") are not supported`, where);
    }
    let inbound: string[] = [];
    if (!sequential) {
      const nodes = (l.inbound_nodes ?? []) as unknown[];
      if (nodes.length > 1) throw new InputError(`layer "${name}" is shared (called ${nodes.length} times), which is not supported`, where);
      if (nodes.length === 1) {
        const refs = nodes[0];
        // Keras 2: [[name, nodeIndex, tensorIndex, kwargs], ...]; Keras 3: {args: [{config: {keras_history: [...]}}]}.
        const list = Array.isArray(refs) ? refs : isObj(refs) && Array.isArray(refs.args) ? (refs.args as unknown[]).flatMap((a) => (Array.isArray(a) ? a : [a])) : [];
        inbound = list.map((r) => {
          const ref = Array.isArray(r) ? r : isObj(r) && isObj(r.config) && Array.isArray(r.config.keras_history) ? r.config.keras_history : undefined;
          if (!ref || typeof ref[0] !== 'string') throw new InputError(`layer "${name}" has an inbound node this reader does not understand`, where);
          if (ref[1] !== 0 || (ref[2] ?? 0) !== 0) throw new InputError(`layer "${name}" uses output ${ref[1]}/${ref[2]} of "${ref[0]}"; only single-output layers are supported`, where);
          return ref[0] as string;
        });
      }
    } else if (layers.length) {
      inbound = [layers[layers.length - 1].name];
    }
    inputShape ??= inputShapeOf(l.config);
    layers.push({ className: l.class_name, name, config: l.config, inbound });
  }
  if (sequential && layers[0].className !== 'InputLayer') {
    // A Sequential model's input is implicit: give it a name the first layer reads from.
    layers.unshift({ className: 'InputLayer', name: '__input__', config: { batch_input_shape: [null, ...(inputShape ?? [])] }, inbound: [] });
    layers[1].inbound = ['__input__'];
  }
  const inputs = layers.filter((l) => l.className === 'InputLayer');
  if (inputs.length !== 1) throw new InputError(`the model has ${inputs.length} inputs; an image classifier has one`, where);
  let outputName = layers[layers.length - 1].name;
  if (!sequential && isObj(cfg) && Array.isArray(cfg.output_layers)) {
    const outs = cfg.output_layers as unknown[];
    if (outs.length !== 1) throw new InputError(`the model has ${outs.length} outputs; a classifier has one`, where);
    const o = outs[0];
    outputName = String(Array.isArray(o) ? o[0] : outputName);
  }
  inputShape = inputShapeOf(inputs[0].config) ?? inputShape;
  if (!inputShape || inputShape.length !== 3) throw new InputError(`the model input is not an image [H, W, C] (shape [${inputShape ?? '?'}])`, where);
  return { sequential, layers, inputName: inputs[0].name, outputName, inputShape };
}

/**
 * A shard path of the manifest (URL-encoded, relative to model.json) as a regular file inside the model's
 * folder. The folder came with the model, so symlinks are resolved: a shard must not be a link to a file
 * elsewhere (whose bytes would become weights, and end up in the purified model), nor a device or a pipe
 * (which would block or never end).
 */
function shardFile(root: string, p: unknown, gi: number, where: string): string {
  if (typeof p !== 'string' || !p) throw new InputError(`weightsManifest[${gi}] has a bad path`, where);
  let rel: string;
  try {
    rel = decodeURIComponent(p);
  } catch {
    throw new InputError(`weight shard path ${JSON.stringify(p.slice(0, 200))} is not valid URL encoding`, where);
  }
  const inside = (abs: string) => abs.startsWith(root + path.sep);
  const abs = path.resolve(root, rel);
  if (!inside(abs)) throw new InputError(`weight shard ${p} is outside the model's folder`, where);
  let real: string;
  try {
    real = fs.realpathSync(abs);
  } catch {
    throw new InputError(`weight shard ${p} is missing`, where);
  }
  if (!inside(real)) throw new InputError(`weight shard ${p} links outside the model's folder`, where);
  if (!fs.statSync(real).isFile()) throw new InputError(`weight shard ${p} is not a file`, where);
  return real;
}

/** Read the manifest's weights from shard files next to model.json. */
function readWeights(json: Json, dir: string, where: string): Map<string, TfjsWeight> {
  const manifest = json.weightsManifest;
  if (!Array.isArray(manifest)) throw new InputError('model.json has no weightsManifest', where);
  const out = new Map<string, TfjsWeight>();
  const root = fs.realpathSync(dir);
  for (const [gi, group] of manifest.entries()) {
    if (!isObj(group) || !Array.isArray(group.paths) || !Array.isArray(group.weights)) throw new InputError(`weightsManifest[${gi}] needs paths and weights`, where);
    const files = (group.paths as unknown[]).map((p) => shardFile(root, p, gi, where));
    // Sizes first: what the manifest needs against what the shards hold.
    let need = 0;
    const specs = (group.weights as unknown[]).map((w, wi) => {
      if (!isObj(w) || typeof w.name !== 'string' || !Array.isArray(w.shape)) throw new InputError(`weightsManifest[${gi}].weights[${wi}] needs name and shape`, where);
      const shape = w.shape as unknown[];
      if (!shape.every((s) => typeof s === 'number' && Number.isSafeInteger(s) && s >= 0)) throw new InputError(`weight ${w.name} has a bad shape`, where);
      const n = (shape as number[]).reduce((a, b) => a * b, 1);
      const q = isObj(w.quantization) ? w.quantization : undefined;
      const dtype = String(q ? q.dtype : (w.dtype ?? 'float32'));
      if (!(dtype in BYTES)) throw new InputError(`weight ${w.name} has dtype ${dtype}, which is not supported`, where);
      if (q && dtype !== 'float16' && (typeof q.scale !== 'number' || typeof q.min !== 'number')) throw new InputError(`weight ${w.name}: quantization needs scale and min`, where);
      const bytes = n * BYTES[dtype];
      need += bytes;
      if (!Number.isSafeInteger(need)) throw new InputError(`weight ${w.name} is too large`, where);
      return { name: w.name, shape: shape as number[], n, dtype, q, bytes, src: String(w.dtype ?? 'float32') };
    });
    const have = files.reduce((s, f) => s + fs.statSync(f).size, 0);
    if (have < need) throw new InputError(`weight shards of group ${gi} hold ${have} bytes but the manifest needs ${need}`, where);
    const buf = Buffer.concat(files.map((f) => fs.readFileSync(f)));
    let off = 0;
    for (const s of specs) {
      const view = new DataView(buf.buffer, buf.byteOffset + off, s.bytes);
      const data = new Float32Array(s.n);
      for (let i = 0; i < s.n; i++) {
        if (s.dtype === 'float32') data[i] = view.getFloat32(4 * i, true);
        else if (s.dtype === 'int32') data[i] = view.getInt32(4 * i, true);
        else if (s.dtype === 'float16') data[i] = halfToFloat(view.getUint16(2 * i, true));
        else if (s.dtype === 'uint16') data[i] = view.getUint16(2 * i, true) * (s.q!.scale as number) + (s.q!.min as number);
        else if (s.q) data[i] = view.getUint8(i) * (s.q.scale as number) + (s.q.min as number);
        else data[i] = view.getUint8(i);
      }
      off += s.bytes;
      if (out.has(s.name)) throw new InputError(`weight ${s.name} is listed twice`, where);
      out.set(s.name, { name: s.name, shape: s.shape, data });
    }
  }
  return out;
}

export function readTfjs(file: string): TfjsPlan {
  const size = fs.statSync(file).size;
  if (size > MAX_JSON) throw new InputError(`model.json is ${size} bytes; a layers topology is far smaller`, file);
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new InputError(`not a TensorFlow.js model.json (${(e as Error).message})`, file);
  }
  if (!isObj(json)) throw new InputError('not a TensorFlow.js model.json', file);
  const topology = topologyOf(json, file);
  const l = layersOf(topology, file);
  return { json, ...l, weights: readWeights(json, path.dirname(file), file) };
}

/** Is this JSON file a TensorFlow.js model (so `.json` paths can be told from other JSON)? */
export function looksLikeTfjs(file: string): boolean {
  try {
    if (fs.statSync(file).size > MAX_JSON) return false;
    const j = JSON.parse(fs.readFileSync(file, 'utf8')) as Json;
    return isObj(j) && 'modelTopology' in j && 'weightsManifest' in j;
  } catch {
    return false;
  }
}
