/**
 * The one list of names: defenses (id, title, whether they need auxiliary data), attacks, auxiliary set types,
 * distribution shifts, data and model formats, profiles, devices, and the one guess of a data format from a
 * path. The job schema, the defense/shift registries, the validator, the VS Code set-up flow and the demo all
 * read these lists, so a name is added in one place (plus the file that implements it). This module imports
 * nothing (no tfjs, no fs): the extension host and the schema generator load it cheaply.
 */

/**
 * Purification defenses, in the job schema's order (SPEC section 4). `offer`: the set-up flow lists them by
 * this rank (fastest first); `needsAuxData`: false for a data-free defense, which runs on a job without
 * auxiliary sets. Adding a defense is one line here plus its file (registered in defenses/index.ts).
 */
export const DEFENSE_CATALOG = {
  ft: { title: 'FT — fine-tuning', needsAuxData: true, offer: 1 },
  fp: { title: 'FP — fine-pruning', needsAuxData: true, offer: 2 },
  nad: { title: 'NAD — neural attention distillation', needsAuxData: true, offer: 4 },
  anp: { title: 'ANP — adversarial neuron pruning', needsAuxData: true, offer: 7 },
  ibau: { title: 'i-BAU — implicit backdoor adversarial unlearning', needsAuxData: true, offer: 10 },
  sau: { title: 'SAU — shared adversarial unlearning', needsAuxData: true, offer: 9 },
  ftsam: { title: 'FT-SAM — sharpness-aware fine-tuning', needsAuxData: true, offer: 5 },
  fst: { title: 'FST — feature shift tuning', needsAuxData: true, offer: 6 },
  npd: { title: 'NPD — neural polarizer', needsAuxData: true, offer: 11 },
  rnp: { title: 'RNP — reconstructive neuron pruning', needsAuxData: true, offer: 8 },
  clp: { title: 'CLP — channel Lipschitzness pruning (data-free)', needsAuxData: false, offer: 3 },
  nc: { title: 'NC — neural cleanse (detection + unlearning)', needsAuxData: true, offer: 12 },
} as const;

export type DefenseId = keyof typeof DEFENSE_CATALOG;
export const DEFENSE_IDS = Object.keys(DEFENSE_CATALOG) as [DefenseId, ...DefenseId[]];
/** The order the set-up flow offers them in. */
export const DEFENSES_OFFERED: DefenseId[] = [...DEFENSE_IDS].sort((a, b) => DEFENSE_CATALOG[a].offer - DEFENSE_CATALOG[b].offer);

export function isDefenseId(id: string): id is DefenseId {
  return Object.prototype.hasOwnProperty.call(DEFENSE_CATALOG, id);
}

/** False for the data-free defenses, which run on a job without auxiliary sets. */
export function needsAuxData(id: string): boolean {
  return isDefenseId(id) ? DEFENSE_CATALOG[id].needsAuxData : true;
}

/**
 * The attacks a job names: the built-in triggers, the user's triggered images (`poisoned-set`), a BackdoorBench
 * record (`record`), and `unknown` (no trigger: ASR, RA and DER are not measured).
 */
export const ATTACK_TYPES = ['badnets', 'blended', 'sig', 'wanet', 'poisoned-set', 'record', 'unknown'] as const;
export type AttackType = (typeof ATTACK_TYPES)[number];

export const AUX_TYPES = ['seen', 'unseen', 'ood', 'external', 'synthetic'] as const;
export type AuxType = (typeof AUX_TYPES)[number];

/** Distribution shifts of `ood` auxiliary sets (implemented in auxdata/shifts.ts, one function each). */
export const SHIFT_NAMES = ['brightness', 'contrast', 'blur', 'noise', 'rotation', 'jitter'] as const;
export type ShiftName = (typeof SHIFT_NAMES)[number];

export const DATA_FORMATS = ['mnist-embedded', 'imagefolder', 'npy', 'npz', 'idx', 'cifar10-bin'] as const;
export type DataFormat = (typeof DATA_FORMATS)[number];

export const MODEL_FORMATS = ['pt', 'safetensors', 'onnx', 'tfjs'] as const;
export type ModelFormat = (typeof MODEL_FORMATS)[number];

export const PROFILES = ['fast', 'paper'] as const;
export type Profile = (typeof PROFILES)[number];

export const DEVICES = ['auto', 'gpu', 'cpu'] as const;
export type Device = (typeof DEVICES)[number];

/**
 * The data format a path holds, for sources that do not name one; undefined when it cannot tell. `entries`
 * lists a folder's files (a folder of CIFAR-10 batches is not an image folder); the caller reads it, so this
 * stays free of file-system access.
 */
export function guessDataFormat(file: string, isDirectory: boolean, entries: readonly string[] = []): DataFormat | undefined {
  const base = file.split(/[\\/]/).filter(Boolean).pop()?.toLowerCase() ?? '';
  if (/[-.]idx3-ubyte(\.gz)?$/.test(base)) return 'idx';
  if (base.endsWith('.npy')) return 'npy';
  if (base.endsWith('.npz')) return 'npz';
  if (base.endsWith('.bin')) return 'cifar10-bin';
  if (isDirectory) return entries.some((f) => /^(data|test)_batch(_\d+)?\.bin$/.test(f)) ? 'cifar10-bin' : 'imagefolder';
  return undefined;
}
