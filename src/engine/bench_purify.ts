/**
 * The purification section of `backdoor-audit bench`: each chosen defense on a victim that PyTorch trained (a
 * zoo folder: victim.pt or victim.onnx, victim.json, aux/test/bd .npy, as scripts/zoo/train_victims.py writes
 * them), once by us through the normal job path (a job file given to runJobFile, as `backdoor-audit run` runs
 * it, fast profile) and once by PyTorch (scripts/zoo/reference_defenses.py --recipe fast, BackdoorBench's
 * recipe with the fast profile's departures), in the same run, on the same 500 auxiliary images and the same
 * test and triggered images. Wall times, their ratio and both sides' ACC/ASR; nothing is asserted. Two ratios:
 * the defense's own seconds (ours: the cell, its evaluation included; PyTorch's: the defense alone), and the
 * whole job, what a user waits for: our `run` against the reference's process, which then also starts Python,
 * imports torch, loads the victim and evaluates it before and after (`--evaluate-victim`), as our job does.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { runJobFile } from './jobs/runner';
import { cpuCores } from './util/cores';
import { DEFENSE_IDS } from './catalog';
import { InputError } from './errors';
import { parseNpy, readNpyPair } from './formats/data/npy';
import { heapEnv } from './util/heap_env';

/** The defenses the section runs when `--purification` names none. */
export const DEFAULT_PURIFICATION = ['ft', 'nad', 'fp'];

/** One defense's measurement on one side. `seconds` is the defense's own wall time (see each side). */
export interface SideResult {
  seconds: number;
  acc: number | null;
  asr: number | null;
  error?: string;
}

export interface OursResult extends SideResult {
  /** The whole job's wall time: model and data loading, baseline evaluation, the cell, results.json. */
  jobSeconds: number;
  /** CPU time of the job (every thread of this process, and the cell processes where /proc says): on a loaded machine wall time overstates the work. */
  cpuSeconds?: number;
}

export interface ReferenceResult extends SideResult {
  /**
   * The reference process's wall time: Python's start, torch's import, the victim's loading, its evaluation on
   * the test sets (`--evaluate-victim`), the defense and the purified model's evaluation.
   */
  processSeconds?: number;
  /** The reference's CPU time over the defense (its row's cpuSeconds). */
  cpuSeconds?: number;
  threads?: number;
  torch?: string;
}

/** PyTorch's side: which defenses it offers (or why it cannot run at all), and one defense at a time. */
export interface ReferenceRunner {
  probe(): { defenses: string[] } | { unavailable: string };
  run(defense: string, victimDir: string, threads: number, log: (s: string) => void): Promise<ReferenceResult>;
}

/** Our side of one defense (injected by tests; the default runs the job file through runJobFile). */
export type OursRunner = (defense: string, victimDir: string, log: (s: string) => void) => Promise<OursResult>;

export interface PurificationRow {
  defense: string;
  ours: OursResult;
  /** null: PyTorch is not available or its reference lacks this defense. */
  torch: ReferenceResult | null;
  /** PyTorch's seconds / ours: above 1 we are faster. */
  ratio: number | null;
  /** The whole job: PyTorch's process seconds / our job's seconds. */
  jobRatio: number | null;
  /** With `repeat` above 1: every run of each side, in the order they ran (alternated); `ours` and `torch` fold them. */
  runs?: { ours: OursResult[]; torch: ReferenceResult[] };
}

export interface PurificationBench {
  victim: { dir: string; name: string; arch?: string; width?: number; auxImages: number; testImages: number; triggeredImages: number };
  profile: 'fast';
  recipe: 'fast';
  threads: number;
  /** Runs of each side per defense, alternated; the times are their medians. */
  repeat: number;
  /** The 1-minute load average before and after the section: the machine may be shared. */
  load: { start: number; end: number };
  torch: { available: true; defenses: string[] } | { available: false; reason: string };
  rows: PurificationRow[];
  /** The rendered table (Markdown), as printed. */
  table: string;
  /** `--whole-job`: every defense in one job through the normal job path. */
  wholeJob?: { defenses: string[]; seconds: number; cpuSeconds: number; rows: Array<{ defense: string; seconds: number; acc: number | null; asr: number | null; error: string | null }> };
}

/** The committed width-8 PreAct-ResNet18 BadNets victim of the tests (scripts/zoo/make_test_fixture.py). */
export function defaultVictimDir(): string {
  // dist/cli.js and src/engine/bench_purify.ts sit at different depths under the repository root.
  const candidates = [path.join(__dirname, '..', 'test', 'fixtures', 'zoo', 'preact8-badnets'), path.join(__dirname, '..', '..', 'test', 'fixtures', 'zoo', 'preact8-badnets')];
  return candidates.find((c) => fs.existsSync(path.join(c, 'victim.json'))) ?? candidates[1];
}

/** `--purification` as given: nothing or `true` = the default list, `all` = every defense; unknown ids refused. */
export function parsePurification(ids: string[] | boolean | undefined): string[] {
  if (ids === undefined || ids === true) return DEFAULT_PURIFICATION;
  if (ids === false) return [];
  if (ids.includes('all')) return [...DEFENSE_IDS];
  const bad = ids.filter((id) => !(DEFENSE_IDS as readonly string[]).includes(id));
  if (bad.length) throw new InputError(`unknown defense ${bad.join(', ')}: choose from ${DEFENSE_IDS.join(', ')} or all`, '--purification');
  return [...new Set(ids)];
}

interface VictimMeta {
  arch?: string;
  width?: number;
  inputShape: [number, number, number];
  numClasses: number;
  normalize?: { mean: number[]; std: number[] };
  target: number;
}

function npyLength(file: string): number {
  return parseNpy(fs.readFileSync(file), file).shape[0];
}

function readVictim(dir: string): { meta: VictimMeta; model: string; aux: number; test: number; triggered: number; perClass: number[] } {
  const metaFile = path.join(dir, 'victim.json');
  if (!fs.existsSync(metaFile)) throw new InputError('not a zoo victim folder: victim.json is missing', dir);
  const meta = JSON.parse(fs.readFileSync(metaFile, 'utf8')) as VictimMeta;
  for (const f of ['aux_x.npy', 'aux_y.npy', 'test_x.npy', 'test_y.npy', 'bd_x.npy', 'bd_y.npy']) {
    if (!fs.existsSync(path.join(dir, f))) throw new InputError(`not a zoo victim folder: ${f} is missing`, dir);
  }
  const model = ['victim.pt', 'victim.onnx'].map((f) => path.join(dir, f)).find((f) => fs.existsSync(f));
  if (!model) throw new InputError('not a zoo victim folder: neither victim.pt nor victim.onnx', dir);
  const aux = readNpyPair(path.join(dir, 'aux_x.npy'), path.join(dir, 'aux_y.npy'), { numClasses: meta.numClasses });
  const perClass = new Array(meta.numClasses).fill(0);
  for (let i = 0; i < aux.n; i++) perClass[aux.y[i]]++;
  return { meta, model, aux: aux.n, test: npyLength(path.join(dir, 'test_y.npy')), triggered: npyLength(path.join(dir, 'bd_y.npy')), perClass };
}

/**
 * The job file our side runs: the victim with its recorded shape, classes and normalization, the zoo's clean
 * test set, its triggered set as a poisoned set (PyTorch's trigger, so the numbers do not depend on our attack
 * code), and the whole auxiliary sample as one `unseen` set: a balanced draw of all of a balanced pool is that
 * pool, so both sides train on the same 500 images.
 */
export function purificationJob(dir: string, defenses: string[]): Record<string, unknown> {
  const v = readVictim(dir);
  // An unbalanced sample cannot be drawn whole by the balanced sampler: ours would train on other images.
  if (v.perClass.some((c) => c !== v.perClass[0])) throw new InputError(`the auxiliary sample is not class-balanced (${v.perClass.join('/')} per class)`, path.join(dir, 'aux_y.npy'));
  const abs = (f: string) => path.resolve(dir, f);
  return {
    model: { path: path.resolve(v.model), inputShape: v.meta.inputShape, numClasses: v.meta.numClasses, ...(v.meta.normalize ? { normalize: v.meta.normalize } : {}) },
    data: { test: { format: 'npy', path: abs('test_x.npy'), labels: abs('test_y.npy') } },
    attack: { type: 'poisoned-set', target: v.meta.target, data: { format: 'npy', path: abs('bd_x.npy'), labels: abs('bd_y.npy') } },
    aux: [{ name: 'zoo-aux', type: 'unseen', source: { format: 'npy', path: abs('aux_x.npy'), labels: abs('aux_y.npy') }, size: v.aux }],
    defenses,
    gic: { mode: 'off' },
    embedding: { method: 'none' },
    profile: 'fast',
    seed: 0,
  };
}

/**
 * CPU seconds of this process's ended and reaped children (cutime + cstime of /proc/self/stat, in Linux's
 * 100 ticks a second); undefined elsewhere.
 */
function childrenCpuSeconds(): number | undefined {
  try {
    const stat = fs.readFileSync('/proc/self/stat', 'utf8');
    // Fields after the parenthesized command name start at the 3rd (state); cutime and cstime are the 16th and 17th.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[13]) + Number(fields[14])) / 100;
  } catch {
    return undefined;
  }
}

async function runJob(dir: string, defenses: string[], workers: number | undefined) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'backdoor-audit-bench-purify-'));
  try {
    const jobPath = path.join(tmp, 'job.json');
    fs.writeFileSync(jobPath, JSON.stringify(purificationJob(dir, defenses)));
    const t0 = Date.now();
    const c0 = process.cpuUsage();
    const children0 = childrenCpuSeconds();
    const results = await runJobFile(jobPath, { outDir: path.join(tmp, 'out'), workers });
    const cpu = process.cpuUsage(c0);
    // The cell processes' time too (a one-defense job trains in one), counted once they have ended.
    const children1 = childrenCpuSeconds();
    const childSeconds = children0 !== undefined && children1 !== undefined ? children1 - children0 : 0;
    return { results, seconds: (Date.now() - t0) / 1000, cpuSeconds: (cpu.user + cpu.system) / 1e6 + childSeconds };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** Our side: a one-defense job through runJobFile; `seconds` is the cell's (defense, evaluation, saving). */
export const runOursJob: OursRunner = async (defense, dir) => {
  const { results, seconds, cpuSeconds } = await runJob(dir, [defense], undefined);
  const row = results.rows.find((r) => r.defense === defense);
  if (!row) return { seconds: NaN, jobSeconds: seconds, cpuSeconds, acc: null, asr: null, error: 'the job returned no row' };
  return { seconds: row.seconds, jobSeconds: seconds, cpuSeconds, acc: row.acc ?? null, asr: row.asr ?? null, ...(row.error ? { error: row.error } : {}) };
};

function referenceScript(): string | undefined {
  const rel = path.join('scripts', 'zoo', 'reference_defenses.py');
  return [path.join(__dirname, '..', rel), path.join(__dirname, '..', '..', rel)].find((f) => fs.existsSync(f));
}

const lastLine = (s: string) =>
  s
    .trim()
    .split('\n')
    .filter((l) => l.trim())
    .pop() ?? '';

/** PyTorch's side through scripts/zoo/reference_defenses.py and the given Python (Debian's python3-torch). */
export function pythonReference(python = '/usr/bin/python3', script = referenceScript()): ReferenceRunner {
  return {
    probe() {
      if (!script) return { unavailable: 'scripts/zoo/reference_defenses.py is not in this installation' };
      if (!fs.existsSync(python)) return { unavailable: `${python} is missing` };
      // The defenses come from the script's own --help, so one added there (anp) is picked up without a change here.
      const r = spawnSync(python, [script, '--help'], { encoding: 'utf8', timeout: 120_000 });
      if (r.status !== 0) {
        const why = /No module named '?torch/.test(r.stderr ?? '') ? `${python} has no torch (install Debian's python3-torch)` : `reference_defenses.py --help failed: ${lastLine(r.stderr ?? '') || `exit ${r.status}`}`;
        return { unavailable: why };
      }
      const m = /--defense \{([^}]+)\}/.exec(r.stdout);
      if (!m) return { unavailable: 'reference_defenses.py --help lists no --defense choices' };
      return { defenses: m[1].split(',').map((s) => s.trim()) };
    },
    async run(defense, dir, threads, log) {
      const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'backdoor-audit-bench-torch-'));
      const out = path.join(tmp, 'reference.json');
      const abs = path.resolve(dir);
      const args = [script!, '--zoo', path.dirname(abs), '--victim', path.basename(abs), '--defense', defense, '--recipe', 'fast', '--threads', String(threads), '--seeds', '0', '--evaluate-victim', '--out', out];
      const t0 = Date.now();
      try {
        const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
          const p = spawn(python, args, { stdio: ['ignore', 'pipe', 'pipe'], env: heapEnv() });
          let err = '';
          p.stdout.setEncoding('utf8').on('data', (s: string) => s.split('\n').filter((l) => l.trim()).forEach((l) => log(`    PyTorch: ${l}`)));
          p.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
          p.on('error', reject);
          p.on('close', (c) => resolve({ code: c, stderr: err }));
        });
        const processSeconds = (Date.now() - t0) / 1000;
        if (code !== 0) return { seconds: NaN, acc: null, asr: null, processSeconds, error: `reference_defenses.py failed: ${lastLine(stderr) || `exit ${code}`}` };
        const rows = JSON.parse(fs.readFileSync(out, 'utf8')) as Array<{ defense: string; seconds: number; cpuSeconds?: number; acc: number; asr: number; threads?: number; torch?: string }>;
        const row = rows.find((r) => r.defense === defense);
        if (!row) return { seconds: NaN, acc: null, asr: null, processSeconds, error: 'reference_defenses.py wrote no row' };
        return { seconds: row.seconds, acc: row.acc, asr: row.asr, processSeconds, cpuSeconds: row.cpuSeconds, threads: row.threads, torch: row.torch };
      } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
      }
    },
  };
}

const DASH = '–';
const secs = (s: SideResult | null | undefined) => (!s || s.error || !Number.isFinite(s.seconds) ? DASH : s.seconds.toFixed(1));
const pct = (v: number | null) => (v === null || !Number.isFinite(v) ? DASH : (100 * v).toFixed(1));
const accAsr = (s: SideResult | null | undefined) => (!s ? DASH : s.error ? `error: ${s.error}` : `${pct(s.acc)} / ${pct(s.asr)}`);
const times = (s: number | undefined) => (s === undefined || !Number.isFinite(s) ? DASH : s.toFixed(1));
const ratioCell = (r: number | null) => (r === null ? DASH : `${r.toFixed(2)}x`);

/** The section's table (Markdown); without PyTorch, our columns only. */
export function formatPurificationTable(rows: PurificationRow[], torchAvailable: boolean): string {
  const head = torchAvailable
    ? ['defense', 'ours s', 'PyTorch s', 'ratio PyTorch/ours (>1 = we are faster)', 'our job s', 'PyTorch process s', 'whole-job ratio', 'our ACC/ASR %', 'PyTorch ACC/ASR %']
    : ['defense', 'ours s', 'our job s', 'our ACC/ASR %'];
  const body = rows.map((r) =>
    torchAvailable
      ? [r.defense, secs(r.ours), secs(r.torch), ratioCell(r.ratio), times(r.ours.jobSeconds), times(r.torch?.error ? undefined : r.torch?.processSeconds), ratioCell(r.jobRatio), accAsr(r.ours), accAsr(r.torch)]
      : [r.defense, secs(r.ours), times(r.ours.jobSeconds), accAsr(r.ours)],
  );
  return [head, head.map(() => '---'), ...body].map((cells) => `| ${cells.join(' | ')} |`).join('\n');
}

/** One row from both sides' results: the ratio only where both measured a time. */
export function purificationRow(defense: string, ours: OursResult, torch: ReferenceResult | null): PurificationRow {
  const ok = (s: SideResult | null): s is SideResult => !!s && !s.error && Number.isFinite(s.seconds) && s.seconds > 0;
  if (!ok(ours) || !ok(torch)) return { defense, ours, torch, ratio: null, jobRatio: null };
  const process = torch.processSeconds;
  const jobRatio = process !== undefined && Number.isFinite(process) && Number.isFinite(ours.jobSeconds) && ours.jobSeconds > 0 ? process / ours.jobSeconds : null;
  return { defense, ours, torch, ratio: torch.seconds / ours.seconds, jobRatio };
}

/** The median of `xs` (the mean of the middle two for an even count); NaN for none, or where one is NaN. */
export function median(xs: number[]): number {
  if (xs.length === 0 || xs.some((x) => Number.isNaN(x))) return NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** The times a side's result may carry besides `seconds`. */
type Timed = SideResult & { jobSeconds?: number; cpuSeconds?: number; processSeconds?: number };

/**
 * Several runs of one side folded into one result: the medians of the times (one run on a shared machine can be
 * a third off), the first run's ACC/ASR (both sides are seeded; the log says when runs disagree), the first
 * error, which then stands for the side.
 */
export function foldRuns<T extends Timed>(runs: T[]): T {
  const failed = runs.find((r) => r.error);
  if (failed || runs.length === 1) return failed ?? runs[0];
  const folded: T = { ...runs[0], seconds: median(runs.map((r) => r.seconds)) };
  const times: Timed = folded;
  // A time some run lacks (no /proc for the CPU) is NaN in the fold, shown as a dash.
  for (const key of ['jobSeconds', 'cpuSeconds', 'processSeconds'] as const) {
    if (runs[0][key] !== undefined) times[key] = median(runs.map((r) => r[key] ?? NaN));
  }
  return folded;
}

/** Whether the runs of one side gave different ACC/ASR. */
const disagree = (runs: SideResult[]) => runs.some((r) => r.acc !== runs[0].acc || r.asr !== runs[0].asr);

export interface PurificationOptions {
  victimDir?: string;
  defenses: string[];
  /** Runs of each side per defense, alternated (ours, PyTorch, ours, ...); the table shows the medians. Default 1. */
  repeat?: number;
  wholeJob?: boolean;
  log: (s: string) => void;
  /** PyTorch's threads; default every core. */
  threads?: number;
  reference?: ReferenceRunner;
  ours?: OursRunner;
}

export async function benchPurification(o: PurificationOptions): Promise<PurificationBench> {
  const dir = path.resolve(o.victimDir ?? defaultVictimDir());
  const v = readVictim(dir);
  const threads = o.threads ?? cpuCores();
  const repeat = o.repeat ?? 1;
  if (!Number.isInteger(repeat) || repeat < 1) throw new InputError(`must be a whole number of runs, 1 or more (got ${repeat})`, '--repeat');
  const reference = o.reference ?? pythonReference();
  const ours = o.ours ?? runOursJob;
  const loadStart = os.loadavg()[0];
  const probe = reference.probe();
  const torch: PurificationBench['torch'] = 'defenses' in probe ? { available: true, defenses: probe.defenses } : { available: false, reason: probe.unavailable };
  o.log(`load average ${loadStart.toFixed(2)} on ${os.cpus().length} cores`);
  const repeatNote = repeat === 1 ? '' : `, ${repeat} runs a side alternated (medians in the table)`;
  o.log(`purification on ${dir} (${v.meta.arch ?? 'model'}${v.meta.width ? ` width ${v.meta.width}` : ''}; ${v.aux} auxiliary, ${v.test} test, ${v.triggered} triggered images), fast profile, ours then PyTorch (${threads} threads) per defense${repeatNote}: ${o.defenses.join(', ')}`);
  if (!torch.available) o.log(`  PyTorch not available: ${torch.reason}; our side only`);
  const rows: PurificationRow[] = [];
  const everyRun: string[] = [];
  for (const id of o.defenses) {
    const withTorch = torch.available && torch.defenses.includes(id);
    if (torch.available && !withTorch) o.log(`  ${id}: PyTorch's reference has no ${id}`);
    const mineRuns: OursResult[] = [];
    const theirRuns: ReferenceResult[] = [];
    for (let run = 1; run <= repeat; run++) {
      const nth = repeat === 1 ? '' : ` (run ${run}/${repeat})`;
      o.log(`  ${id}: ours${nth}...`);
      const mine = await ours(id, dir, o.log);
      mineRuns.push(mine);
      o.log(`  ${id}: ours${nth} ${mine.error ? `error: ${mine.error}` : `ACC ${pct(mine.acc)}% ASR ${pct(mine.asr)}%`} ${secs(mine)} s (job ${mine.jobSeconds.toFixed(1)} s, CPU ${mine.cpuSeconds?.toFixed(1) ?? '–'} s)`);
      if (withTorch) {
        o.log(`  ${id}: PyTorch${nth}...`);
        const theirs = await reference.run(id, dir, threads, o.log);
        theirRuns.push(theirs);
        o.log(`  ${id}: PyTorch${nth} ${theirs.error ? `error: ${theirs.error}` : `ACC ${pct(theirs.acc)}% ASR ${pct(theirs.asr)}%`} ${secs(theirs)} s (process ${times(theirs.processSeconds)} s, CPU ${theirs.cpuSeconds?.toFixed(1) ?? '–'} s)`);
      }
    }
    const row = purificationRow(id, foldRuns(mineRuns), withTorch ? foldRuns(theirRuns) : null);
    if (repeat > 1) {
      row.runs = { ours: mineRuns, torch: theirRuns };
      const list = (xs: Array<number | undefined>) => xs.map(times).join(', ');
      everyRun.push(
        `  ${id}: our job ${list(mineRuns.map((r) => r.jobSeconds))} s (cell ${list(mineRuns.map((r) => r.seconds))})` +
          (withTorch ? `; PyTorch's process ${list(theirRuns.map((r) => r.processSeconds))} s (defense ${list(theirRuns.map((r) => r.seconds))})` : ''),
      );
      for (const [side, runs] of [['our', mineRuns], ["PyTorch's", theirRuns]] as const) {
        if (runs.length && !runs.some((r) => r.error) && disagree(runs)) o.log(`  ${id}: ${side} runs gave different ACC/ASR: ${runs.map((r) => `${pct(r.acc)} / ${pct(r.asr)}`).join(', ')}; the table shows the first`);
      }
    }
    rows.push(row);
  }
  const table = formatPurificationTable(rows, torch.available);
  if (rows.length) o.log(table);
  if (everyRun.length) o.log(`every run, in order:\n${everyRun.join('\n')}`);
  let wholeJob: PurificationBench['wholeJob'];
  if (o.wholeJob) {
    const ids = [...DEFENSE_IDS];
    o.log(`  the whole default job (${ids.join(', ')}) as \`backdoor-audit run\` runs it...`);
    const { results, seconds, cpuSeconds } = await runJob(dir, ids, undefined);
    wholeJob = { defenses: ids, seconds, cpuSeconds, rows: results.rows.map((r) => ({ defense: r.defense, seconds: r.seconds, acc: r.acc ?? null, asr: r.asr ?? null, error: r.error })) };
    o.log(`  whole job: ${seconds.toFixed(1)} s with ${results.backend.threads} cell thread(s)`);
  }
  const load = { start: loadStart, end: os.loadavg()[0] };
  o.log(`load average ${load.end.toFixed(2)} at the end`);
  return {
    victim: { dir, name: path.basename(dir), arch: v.meta.arch, width: v.meta.width, auxImages: v.aux, testImages: v.test, triggeredImages: v.triggered },
    profile: 'fast',
    recipe: 'fast',
    threads,
    repeat,
    load,
    torch,
    rows,
    table,
    ...(wholeJob ? { wholeJob } : {}),
  };
}
