/**
 * `backdoor-audit diff A B`: what changed between two models of one architecture, layer by layer, in the terms
 * an auditor asks about: how far the weights moved (||W' - W|| / ||W||), which channels were pruned or masked
 * (zeroed BatchNorm gamma, zeroed filters, zeroed head columns), which modules were inserted (NPD) and how the
 * BatchNorm running statistics moved. The comparison runs on PyTorch-layout state_dicts, so two files in
 * different formats compare as long as their parameter names agree (an unfolded ONNX export keeps them).
 *
 * Pure arithmetic over Float32Arrays (no tensors are created here; Model.stateDict() disposes its own).
 */
import * as path from 'node:path';
import type { Model } from '../nn/model';
import { toFloat32Array, type PtStateDict, type PtTensor } from '../nn/module';
import { InputError } from '../errors';
import { loadModelFile } from './model_io';
import { initBackend } from '../backend';
import type { LayerDiff, LayerKind, ModelDiff, ModelFileDiff, ModuleOnlyIn } from '../../shared/model_diff';

/** Trainable tensor names; running statistics are compared separately and num_batches_tracked not at all. */
const TRAINABLE = new Set(['weight', 'bias']);
const STATS = new Set(['running_mean', 'running_var']);

function split(key: string): [string, string] {
  const i = key.lastIndexOf('.');
  return i < 0 ? ['', key] : [key.slice(0, i), key.slice(i + 1)];
}

/** Six significant digits: enough for a table, and results.json stays small. */
function round(v: number): number {
  return v === 0 || !Number.isFinite(v) ? v : Number(v.toPrecision(6));
}

function sumSq(a: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return s;
}

function diffSq(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const d = b[i] - a[i];
    s += d * d;
  }
  return s;
}

/** ||b - a|| / ||a||; 0 when both are zero, null when only `a` is. */
function relative(num: number, den: number): number | null {
  if (den === 0) return num === 0 ? 0 : null;
  return round(Math.sqrt(num) / Math.sqrt(den));
}

/** Indices of slices along dim 0 (rows: `dim` 0) or dim 1 (columns) that are all zero in `t`. */
function zeroSlices(t: Float32Array, shape: number[], dim: 0 | 1): Set<number> {
  const out = shape[0];
  const inn = shape.length > 1 ? shape[1] : 1;
  const inner = shape.slice(2).reduce((a, b) => a * b, 1);
  const n = dim === 0 ? out : inn;
  const nonzero = new Uint8Array(n);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inn; i++) {
      const base = (o * inn + i) * inner;
      for (let k = 0; k < inner; k++) {
        if (t[base + k] !== 0) {
          nonzero[dim === 0 ? o : i] = 1;
          break;
        }
      }
    }
  }
  const zero = new Set<number>();
  for (let k = 0; k < n; k++) if (!nonzero[k]) zero.add(k);
  return zero;
}

/** Zero in `b` and not zero in `a`, ascending. */
function newlyZero(a: Set<number>, b: Set<number>): number[] {
  return [...b].filter((k) => !a.has(k)).sort((x, y) => x - y);
}

function kindOf(tensors: Map<string, PtTensor>): LayerKind {
  if (tensors.has('running_mean')) return 'batchnorm';
  const w = tensors.get('weight');
  if (w?.shape.length === 4) return 'conv';
  if (w?.shape.length === 2) return 'linear';
  return 'other';
}

/** state_dict keys grouped by module path, in the dict's order. */
function byModule(sd: PtStateDict): Map<string, Map<string, PtTensor>> {
  const out = new Map<string, Map<string, PtTensor>>();
  for (const [key, t] of sd) {
    const [mod, name] = split(key);
    const m = out.get(mod) ?? new Map<string, PtTensor>();
    out.set(mod, m);
    m.set(name, t);
  }
  return out;
}

const count = (t: PtTensor) => t.shape.reduce((a, b) => a * b, 1);

/**
 * The smallest module paths covering keys present in one state_dict only. A module inserted in front of
 * another (`x.inserted.0.weight`, `x.inserted.1.running_mean`) is reported once, as `x.inserted`.
 */
function onlyIn(sd: PtStateDict, other: PtStateDict): ModuleOnlyIn[] {
  const groups = new Map<string, ModuleOnlyIn>();
  for (const [key, t] of sd) {
    if (other.has(key)) continue;
    const ins = /^(.*?\.?inserted)\./.exec(key);
    const name = ins ? ins[1] : split(key)[0];
    const g = groups.get(name) ?? { name, params: 0, tensors: [] };
    groups.set(name, g);
    g.tensors.push(key);
    if (TRAINABLE.has(split(key)[1])) g.params += count(t);
  }
  return [...groups.values()];
}

/** A name with its separators unified: TensorFlow.js layer names write `layer1.0.bn1` as `layer1_0_bn1`. */
const flat = (k: string) => k.replace(/[./]/g, '_');

/**
 * `b` with its keys renamed to `a`'s where they differ only in separators (a TensorFlow.js model written from a
 * PyTorch one), so that both compare by the PyTorch names; unchanged when the names already agree.
 */
function alignNames(a: PtStateDict, b: PtStateDict): PtStateDict {
  const direct = [...a.keys()].filter((k) => b.has(k)).length;
  const byFlat = new Map([...a.keys()].map((k) => [flat(k), k]));
  if (byFlat.size !== a.size) return b;
  const renamed: PtStateDict = new Map();
  let matched = 0;
  for (const [k, t] of b) {
    const target = a.has(k) ? k : byFlat.get(flat(k));
    if (target && target !== k && b.has(target)) return b; // ambiguous: keep the names as they are
    if (target) matched++;
    renamed.set(target ?? k, t);
  }
  return matched > direct ? renamed : b;
}

/**
 * Compare two PyTorch-layout state_dicts. Every tensor both have must have the same shape (otherwise they are
 * not one architecture); tensors only one has are reported as inserted or removed modules.
 */
export function diffStateDicts(a: PtStateDict, b0: PtStateDict, where = 'diff'): ModelDiff {
  const b = alignNames(a, b0);
  const shared = [...a.keys()].filter((k) => b.has(k));
  if (!shared.some((k) => TRAINABLE.has(split(k)[1]))) {
    throw new InputError('the two models share no parameter name: they are not two models of the same architecture', where);
  }
  // A defense adds or removes a module or two; most names differing means another naming scheme (a graph whose
  // layers were named by hand), where a per-layer comparison would list everything as inserted and removed.
  const trainableA = [...a.keys()].filter((k) => TRAINABLE.has(split(k)[1]));
  const sharedTrainable = trainableA.filter((k) => b.has(k));
  if (sharedTrainable.length < 0.5 * trainableA.length) {
    const onlyB = [...b.keys()].filter((k) => !a.has(k) && TRAINABLE.has(split(k)[1]));
    throw new InputError(
      `the two models name their parameters differently (${sharedTrainable.length} of ${trainableA.length} weights match by name; e.g. ${trainableA.find((k) => !b.has(k))} vs ${onlyB[0] ?? '?'}): compare files that keep the PyTorch names (.pt, .safetensors, .onnx)`,
      where,
    );
  }
  for (const k of shared) {
    const sa = a.get(k)!.shape;
    const sb = b.get(k)!.shape;
    if (sa.join(',') !== sb.join(',')) throw new InputError(`${k} is [${sa.join(', ')}] in one model and [${sb.join(', ')}] in the other: not the same architecture`, where);
  }
  const layers: LayerDiff[] = [];
  let changedLayers = 0;
  let totalNum = 0;
  let totalDen = 0;
  const mb = byModule(b);
  for (const [name, ta] of byModule(a)) {
    const tb = mb.get(name);
    if (!tb) continue;
    const kind = kindOf(ta);
    let num = 0;
    let den = 0;
    let params = 0;
    let statsMoved = false;
    const data = (m: Map<string, PtTensor>, k: string) => toFloat32Array(m.get(k)!.data);
    for (const k of ta.keys()) {
      if (!TRAINABLE.has(k) || !tb.has(k)) continue;
      const x = data(ta, k);
      const y = data(tb, k);
      num += diffSq(x, y);
      den += sumSq(x);
      params += x.length;
    }
    const has = (k: string) => ta.has(k) && tb.has(k);
    if (params === 0 && !has('running_mean')) continue;
    totalNum += num;
    totalDen += den;
    const w = has('weight') ? { a: data(ta, 'weight'), b: data(tb, 'weight'), shape: ta.get('weight')!.shape } : undefined;
    let zeroed: number[] = [];
    let zeroedInputs: number[] | undefined;
    if (kind === 'batchnorm' && w) {
      // A BatchNorm channel is pruned when its gamma is 0: its output is then the constant beta (0 for CLP).
      const za = new Set<number>();
      const zb = new Set<number>();
      w.a.forEach((v, i) => v === 0 && za.add(i));
      w.b.forEach((v, i) => v === 0 && zb.add(i));
      zeroed = newlyZero(za, zb);
    } else if (w && w.shape.length >= 2) {
      zeroed = newlyZero(zeroSlices(w.a, w.shape, 0), zeroSlices(w.b, w.shape, 0));
      const zi = newlyZero(zeroSlices(w.a, w.shape, 1), zeroSlices(w.b, w.shape, 1));
      if (zi.length) zeroedInputs = zi;
    }
    const layer: LayerDiff = {
      name,
      kind,
      params,
      channels: w ? w.shape[0] : (ta.get('running_mean')?.shape[0] ?? 0),
      relChange: relative(num, den),
      absChange: round(Math.sqrt(num)),
      zeroed,
      ...(zeroedInputs ? { zeroedInputs } : {}),
    };
    if (has('running_mean') && has('running_var')) {
      const rel = (k: string) => {
        const x = data(ta, k);
        const y = data(tb, k);
        const d = diffSq(x, y);
        if (d > 0) statsMoved = true;
        return relative(d, sumSq(x));
      };
      layer.bnStats = { mean: rel('running_mean'), var: rel('running_var') };
    }
    if (num > 0 || statsMoved) changedLayers++;
    layers.push(layer);
  }
  return {
    layers,
    inserted: onlyIn(b, a),
    removed: onlyIn(a, b),
    relChange: relative(totalNum, totalDen),
    changedLayers,
    zeroedChannels: layers.reduce((s, l) => s + l.zeroed.length, 0),
  };
}

/** The diff of two models in memory (a victim and the model a defense returned). */
export async function diffModels(a: Model, b: Model): Promise<ModelDiff> {
  return diffStateDicts(await a.stateDict(), await b.stateDict());
}

/** Graph formats name their architecture by format; their parameter names decide whether they compare. */
const GRAPH_ARCHS = new Set(['onnx', 'tfjs']);

/** Load two model files with the ordinary loaders (any supported format) and compare them. */
export async function diffModelFiles(fileA: string, fileB: string): Promise<ModelFileDiff> {
  await initBackend('cpu');
  const a = loadModelFile(fileA, path.basename(fileA));
  try {
    const b = loadModelFile(fileB, path.basename(fileB));
    try {
      if (a.info.arch !== b.info.arch && !GRAPH_ARCHS.has(a.info.arch) && !GRAPH_ARCHS.has(b.info.arch)) {
        throw new InputError(`not the same architecture: ${path.basename(fileA)} is ${a.info.arch}, ${path.basename(fileB)} is ${b.info.arch}`, fileB);
      }
      const d = diffStateDicts(await a.model.stateDict(), await b.model.stateDict(), path.basename(fileB));
      const info = (l: typeof a) => ({ path: l.info.path, format: l.info.format, arch: l.info.arch, params: l.info.params });
      return { a: info(a), b: info(b), ...d };
    } finally {
      b.model.dispose();
    }
  } finally {
    a.model.dispose();
  }
}

function fmtRel(v: number | null): string {
  return v === null ? 'n/a' : v === 0 ? '0' : v < 1e-4 ? v.toExponential(2) : v.toFixed(4);
}

/** Channel lists stay readable: `3, 7, 12` or `3, 7, 12, ... (+40)`. */
function fmtChannels(c: number[] | undefined, max = 12): string {
  if (!c || c.length === 0) return '';
  return c.length <= max ? c.join(', ') : `${c.slice(0, max).join(', ')}, ... (+${c.length - max})`;
}

/** The text form of `backdoor-audit diff`: a header, the inserted/removed modules, one line per layer. */
export function formatModelDiff(d: ModelFileDiff): string {
  const head = (x: ModelFileDiff['a']) => `${x.path} (${x.format}, ${x.arch}, ${x.params.toLocaleString('en-US')} parameters)`;
  const lines = [
    `A: ${head(d.a)}`,
    `B: ${head(d.b)}`,
    `relative weight change ||B - A|| / ||A||: ${fmtRel(d.relChange)}; ${d.changedLayers} of ${d.layers.length} layers changed; ${d.zeroedChannels} channel${d.zeroedChannels === 1 ? '' : 's'} zeroed`,
  ];
  for (const m of d.inserted) lines.push(`inserted: ${m.name} (${m.params.toLocaleString('en-US')} parameters: ${m.tensors.join(', ')})`);
  for (const m of d.removed) lines.push(`removed:  ${m.name} (${m.params.toLocaleString('en-US')} parameters: ${m.tensors.join(', ')})`);
  const w = Math.max(5, ...d.layers.map((l) => l.name.length));
  lines.push('', `${'layer'.padEnd(w)}  ${'kind'.padEnd(9)}  ${'params'.padStart(9)}  ${'rel.change'.padStart(10)}  ${'BN mean'.padStart(9)}  ${'BN var'.padStart(9)}  zeroed channels`);
  for (const l of d.layers) {
    const zeroed = [fmtChannels(l.zeroed), l.zeroedInputs ? `inputs ${fmtChannels(l.zeroedInputs)}` : ''].filter(Boolean).join('; ');
    lines.push(
      `${l.name.padEnd(w)}  ${l.kind.padEnd(9)}  ${String(l.params).padStart(9)}  ${fmtRel(l.relChange).padStart(10)}  ${(l.bnStats ? fmtRel(l.bnStats.mean) : '').padStart(9)}  ${(l.bnStats ? fmtRel(l.bnStats.var) : '').padStart(9)}  ${zeroed}`,
    );
  }
  return lines.join('\n');
}
