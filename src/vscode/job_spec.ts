/**
 * Building an `audit.json` from the answers of the set-up flow. Pure (no `vscode` import) so that the rules —
 * paths relative to the job file, data formats guessed from names, defaults from the settings — are unit
 * tested without an editor.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ATTACK_TYPES, AUX_TYPES, DEFENSE_CATALOG, DEFENSES_OFFERED, SHIFT_NAMES, guessDataFormat, needsAuxData, type AuxType, type DataFormat } from '../engine/catalog';

export type { AuxType, DataFormat };
export { AUX_TYPES };

export interface DataSource {
  /** Absolute while the flow runs; absent for the built-in MNIST digits. */
  path?: string;
  format: DataFormat;
  labels?: string;
}

export const OOD_SHIFTS = SHIFT_NAMES;
export const ATTACKS = ATTACK_TYPES;
/** Defense ids of the engine's catalog, fastest first (the order the set-up flow offers them in). */
export const DEFENSES: readonly { id: string; label: string }[] = DEFENSES_OFFERED.map((id) => ({ id, label: DEFENSE_CATALOG[id].title }));

export interface AuxAnswer {
  name: string;
  type: AuxType;
  /** Absolute path; not used by `seen` (drawn from train) nor `synthetic` (built from the model). */
  source?: DataSource;
  shift?: (typeof OOD_SHIFTS)[number];
  perClass?: number;
}

/**
 * The attack as the set-up flow asks it: a built-in trigger, the user's triggered test images (`data`), their
 * trigger file (`image` for BadNets/Blended with the patch `position`, `grids` for WaNet), the model's
 * BackdoorBench record, or no trigger known. Paths are absolute.
 */
export interface AttackAnswer {
  type: (typeof ATTACKS)[number];
  target: number;
  data?: DataSource;
  image?: string;
  position?: string;
  alpha?: number;
  grids?: string;
}

export interface JobAnswers {
  /** Absolute paths everywhere; `buildJob` makes them relative to the job file. */
  model: string;
  test: DataSource;
  train?: DataSource;
  attack: AttackAnswer;
  aux: AuxAnswer[];
  defenses: string[];
  gic: { mode: 'off' | 'on' | 'both'; delta: number; norm: 'inf' | '2' };
  profile: 'fast' | 'paper';
  device: 'auto' | 'gpu' | 'cpu';
  seed?: number;
}

/** The data format a path most likely holds, from its name; undefined when it cannot tell. */
export function guessFormat(file: string, isDirectory: boolean): DataFormat | undefined {
  let entries: string[] = [];
  try {
    if (isDirectory) entries = fs.readdirSync(file);
  } catch {
    // An unreadable folder is guessed from its name alone; reading it later says what is wrong.
  }
  return guessDataFormat(file, isDirectory, entries);
}

/** A `.npy` file that holds labels rather than images, by the usual naming conventions. */
export function isLabelsNpy(file: string): boolean {
  const b = path.basename(file).toLowerCase();
  return /\.npy$/.test(b) && /(^|[_\-.])(y|labels?|targets?)\.npy$/.test(b);
}

/**
 * The labels file paired with an images `.npy` among `siblings`: `x_test.npy` -> `y_test.npy`,
 * `test_images.npy` / `test_x.npy` / `test.npy` -> `test_labels.npy` / `test_y.npy`.
 */
export function pairLabels(images: string, siblings: string[]): string | undefined {
  const dir = path.dirname(images);
  const b = path.basename(images, '.npy');
  const stems = new Set<string>();
  const m = /^(.*?)(?:[_\-.]?)(x|images?|imgs?|data)$/i.exec(b);
  const root = m ? m[1] : b;
  const prefixed = /^(x|images?|imgs?)([_\-.])(.*)$/i.exec(b);
  for (const suffix of ['labels', 'label', 'y', 'targets']) {
    stems.add(root ? `${root}_${suffix}` : suffix);
    stems.add(root ? `${root}-${suffix}` : suffix);
    stems.add(`${b}_${suffix}`);
    if (prefixed) stems.add(`${suffix}${prefixed[2]}${prefixed[3]}`);
  }
  const byName = new Map(siblings.map((s) => [path.basename(s).toLowerCase(), s]));
  for (const s of stems) {
    const hit = byName.get(`${s}.npy`.toLowerCase());
    if (hit && path.resolve(dir, path.basename(hit)) !== path.resolve(images)) return hit;
  }
  return undefined;
}

/** A job path as the schema wants it: relative to the job's folder, with forward slashes. */
export function relPath(jobDir: string, file: string): string {
  const r = path.relative(jobDir, file) || '.';
  return r.split(path.sep).join('/');
}

function relSource(jobDir: string, s: DataSource): DataSource {
  // The engine splits its embedded MNIST into disjoint train / pool / test parts by role: no path.
  if (s.format === 'mnist-embedded') return { format: s.format };
  const out: DataSource = { path: relPath(jobDir, s.path ?? '.'), format: s.format };
  if (s.labels) out.labels = relPath(jobDir, s.labels);
  return out;
}

/** Unique, readable aux-set names: the results grid is keyed by them. */
export function auxName(type: AuxType, used: Set<string>, hint?: string): string {
  const base = (hint ? `${type}-${hint}` : type).replace(/[^A-Za-z0-9_\-]+/g, '-').replace(/^-+|-+$/g, '') || type;
  let name = base;
  for (let i = 2; used.has(name); i++) name = `${base}-${i}`;
  used.add(name);
  return name;
}

/** Problems that would make the engine reject the job, caught before writing it. */
export function checkAnswers(a: JobAnswers): string[] {
  const errs: string[] = [];
  if (a.aux.some((x) => x.type === 'seen') && !a.train) errs.push('a "seen" auxiliary set needs the training data');
  for (const x of a.aux) {
    if ((x.type === 'unseen' || x.type === 'ood' || x.type === 'external') && !x.source) errs.push(`auxiliary set "${x.name}" needs a data source`);
    if (x.type === 'ood' && !x.shift) errs.push(`auxiliary set "${x.name}" needs a shift`);
  }
  if (a.defenses.length > 0 && a.aux.length === 0 && a.defenses.some((d) => needsAuxData(d))) errs.push('the defenses need at least one auxiliary set');
  if (!Number.isInteger(a.attack.target) || a.attack.target < 0) errs.push('the attack target must be a class index');
  if (a.attack.type === 'poisoned-set' && !a.attack.data) errs.push('the triggered test images are missing');
  if (a.attack.type === 'poisoned-set' && a.attack.data?.format === 'mnist-embedded') errs.push('the embedded MNIST digits carry no trigger: the triggered test images must be your own');
  if (!(a.gic.delta > 0)) errs.push('the GIC bound delta must be positive');
  const names = new Set<string>();
  for (const x of a.aux) {
    if (names.has(x.name)) errs.push(`two auxiliary sets are named "${x.name}"`);
    names.add(x.name);
  }
  return errs;
}

/** The `audit.json` object (SPEC section 9) for answers, with paths relative to `jobPath`'s folder. */
export function buildJob(a: JobAnswers, jobPath: string): Record<string, unknown> {
  const dir = path.dirname(jobPath);
  const data: Record<string, DataSource> = { test: relSource(dir, a.test) };
  if (a.train) data.train = relSource(dir, a.train);
  const aux = a.aux.map((x) => {
    const o: Record<string, unknown> = { name: x.name, type: x.type };
    if (x.source) o.source = relSource(dir, x.source);
    if (x.shift) o.shift = x.shift;
    if (x.perClass !== undefined) o.perClass = x.perClass;
    return o;
  });
  const job: Record<string, unknown> = {
    model: relPath(dir, a.model),
    data,
    attack: attackOf(a.attack, dir),
    aux,
    defenses: a.defenses,
    gic: { mode: a.gic.mode, delta: a.gic.delta, norm: a.gic.norm },
    profile: a.profile,
    seed: a.seed ?? 0,
    device: a.device,
  };
  return job;
}

/** The job's attack for an answer: files relative to the job folder; no target where none is meaningful. */
function attackOf(a: AttackAnswer, dir: string): Record<string, unknown> {
  if (a.type === 'unknown' || a.type === 'record') return { type: a.type };
  const o: Record<string, unknown> = { type: a.type, target: a.target };
  if (a.type === 'poisoned-set' && a.data) o.data = relSource(dir, a.data);
  if (a.type === 'badnets' && a.image) o.patch = { image: relPath(dir, a.image), ...(a.position ? { position: a.position } : {}) };
  if (a.type === 'blended' && a.image) o.image = relPath(dir, a.image);
  if (a.type === 'blended' && a.alpha !== undefined) o.alpha = a.alpha;
  if (a.type === 'wanet' && a.grids) o.grids = relPath(dir, a.grids);
  return o;
}

/** Where a model's job file goes: `audit.json` next to it, or `<model>.audit.json` when that is taken. */
export function jobPathFor(model: string, exists: (p: string) => boolean): { path: string; taken: boolean } {
  const dir = path.dirname(model);
  const plain = path.join(dir, 'audit.json');
  if (!exists(plain)) return { path: plain, taken: false };
  const stem = path.basename(model).replace(/\.(pt|pth|onnx|safetensors|json)$/i, '');
  return { path: path.join(dir, `${stem}.audit.json`), taken: true };
}

/** The model a job file names, resolved against the job's folder (the key of "one job per model"). */
export function jobModelPath(jobPath: string, job: unknown): string | undefined {
  const m = (job as { model?: unknown })?.model;
  const p = typeof m === 'string' ? m : typeof (m as { path?: unknown })?.path === 'string' ? (m as { path: string }).path : undefined;
  return p === undefined ? undefined : path.resolve(path.dirname(jobPath), p);
}

/** A fresh output folder per run (so past runs stay listed): `<base>/<job stem>-<yyyymmdd-hhmmss>`. */
export function runOutDir(jobPath: string, setting: string, now: Date): string {
  const jobDir = path.dirname(jobPath);
  const base = setting.trim() ? path.resolve(jobDir, setting.trim()) : path.join(jobDir, 'audit-out');
  const stem = path.basename(jobPath, '.json').replace(/\.audit$/, '') || 'audit';
  const p = (n: number) => String(n).padStart(2, '0');
  const stamp = `${now.getFullYear()}${p(now.getMonth() + 1)}${p(now.getDate())}-${p(now.getHours())}${p(now.getMinutes())}${p(now.getSeconds())}`;
  return path.join(base, `${stem === 'audit' ? 'run' : stem}-${stamp}`);
}
