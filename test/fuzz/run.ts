/**
 * The fuzz loop, run inside a worker thread (see worker.ts) so that the test can stop a reader that hangs
 * and measure memory on a heap of its own. For each case: every hostile input once, then `perCase` seeded
 * mutations of valid files. Each read must return or throw InputError; anything else is recorded as a
 * finding with the seed that reproduces it.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { InputError } from '../../src/engine/errors';
import { Rng } from '../../src/engine/util/rng';
import { FUZZ_CASES, type FuzzCase } from './cases';
import { MUTATORS, type Mutator } from './mutate';

export type Outcome = 'ok' | 'InputError' | 'untyped' | 'alloc';

export interface Finding {
  caseName: string;
  input: string;
  outcome: Outcome;
  detail: string;
}

export interface CaseSummary {
  name: string;
  cases: number;
  outcomes: Record<Outcome, number>;
  /** Per mutator (and `hostile:<label>`): how many runs and how many were accepted. */
  byInput: Record<string, { runs: number; ok: number; inputError: number }>;
  /** First lines of the distinct InputError messages, with counts (what users would see). */
  messages: Record<string, number>;
  maxGrowthPerByte: number;
  /** Distinct InputError messages this case must reach (FuzzCase.minMessages). */
  minMessages: number;
  /** Share of the cases that must be refused (FuzzCase.refusedShare). */
  refusedShare: number;
  /** Wall time of the case (informational; the test asserts no timing). */
  ms: number;
  /** Seeded mutations run (the rest of `cases` are hand-made hostile inputs). */
  mutations: number;
  /** Largest peak resident growth of one read (0 where it cannot be measured). */
  maxPeakBytes: number;
}

export interface FuzzOptions {
  seed: number;
  perCase: number;
  only?: string[];
  /** Called before each read, so a watchdog knows what was running if it hangs. */
  onStart?: (label: string) => void;
}

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as (o?: { type: 'minor' | 'major' }) => void;

/**
 * A full collection costs several milliseconds, the read itself often less. Before each read only the young
 * generation is collected, with a full collection whenever the heap has grown by GC_EVERY since the last
 * one; a read that seems to exceed its bound is re-measured after a full collection before it counts.
 */
const GC_EVERY = 8 << 20;
let lastFull = 0;
function collect(): void {
  if (used() - lastFull > GC_EVERY) {
    gc();
    lastFull = used();
  } else gc({ type: 'minor' });
}

/** Memory the reader allocated and still holds (its result is kept alive until measured). */
function used(): number {
  const m = process.memoryUsage();
  return m.arrayBuffers + m.heapUsed;
}

/** Fixed slack for the reader's own code paths, JSON and regex caches, ajv, error objects. */
const SLACK = 24 << 20;
/** The peak also sees garbage the reader made and V8 had not collected yet, and heap pages it grew. */
const PEAK_SLACK = 64 << 20;

/**
 * Peak resident memory during one read, from Linux's high-water mark: writing 5 to clear_refs resets VmHWM
 * to the current RSS, so VmHWM afterwards is the peak of this read. The retained growth alone would miss a
 * reader that allocates gigabytes from a lying header and then fails (nothing retained, the machine swapping).
 * Undefined where /proc is not available.
 */
const peakMeter = (() => {
  const status = '/proc/self/status';
  const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(fs.readFileSync(status, 'utf8'))?.[1]) * 1024;
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
    if (!Number.isFinite(kb('VmHWM')) || !Number.isFinite(kb('VmRSS'))) return undefined;
  } catch {
    return undefined;
  }
  return {
    start(): number {
      fs.writeFileSync('/proc/self/clear_refs', '5');
      return kb('VmRSS');
    },
    peak: () => kb('VmHWM'),
  };
})();

function classify(e: unknown): { outcome: Outcome; detail: string } {
  if (e instanceof InputError) return { outcome: 'InputError', detail: e.message };
  const err = e as Error;
  return { outcome: 'untyped', detail: `${err?.name ?? typeof e}: ${String(err?.message ?? e).split('\n')[0]}` };
}

function runOne(c: FuzzCase, file: string, dir: string, bytes: Uint8Array): { outcome: Outcome; detail: string; growth: number; peak: number } {
  fs.writeFileSync(file, bytes);
  collect();
  const before = used();
  const rss0 = peakMeter?.start();
  let result: unknown;
  let r: { outcome: Outcome; detail: string };
  try {
    result = c.read(file, dir);
    r = { outcome: 'ok', detail: '' };
  } catch (e) {
    r = classify(e);
  }
  const peak = peakMeter && rss0 !== undefined ? Math.max(0, peakMeter.peak() - rss0) : 0;
  const factor = c.allocFactor ?? 16;
  const bound = factor * bytes.length + SLACK;
  let growth = used() - before;
  if (growth > bound) {
    // Confirm with a full collection: garbage the read made is not what it holds.
    gc();
    growth = used() - before;
  }
  result = undefined;
  void result;
  if (growth > bound) return { outcome: 'alloc', detail: `grew ${growth} bytes reading ${bytes.length} (bound ${bound}); ${r.outcome} ${r.detail}`, growth, peak };
  const peakBound = factor * bytes.length + PEAK_SLACK;
  if (peak > peakBound) return { outcome: 'alloc', detail: `peaked at ${peak} bytes reading ${bytes.length} (bound ${peakBound}); ${r.outcome} ${r.detail}`, growth, peak };
  return { ...r, growth, peak };
}

export function runFuzz(o: FuzzOptions): { summaries: CaseSummary[]; findings: Finding[] } {
  const summaries: CaseSummary[] = [];
  const findings: Finding[] = [];
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-fuzz-'));
  try {
    for (const c of FUZZ_CASES) {
      if (o.only && !o.only.includes(c.name)) continue;
      const dir = path.join(root, c.name.replace(/[^A-Za-z0-9]+/g, '_'));
      fs.mkdirSync(dir);
      c.setup?.(dir);
      const file = path.join(dir, c.fileName);
      const s: CaseSummary = { name: c.name, cases: 0, outcomes: { ok: 0, InputError: 0, untyped: 0, alloc: 0 }, byInput: {}, messages: {}, maxGrowthPerByte: 0, maxPeakBytes: 0, mutations: 0, minMessages: c.minMessages ?? 3, refusedShare: c.refusedShare ?? 1 / 3, ms: 0 };
      const t0 = Date.now();
      const record = (input: string, bytes: Uint8Array) => {
        o.onStart?.(`${c.name} / ${input}`);
        const r = runOne(c, file, dir, bytes);
        s.cases++;
        s.outcomes[r.outcome]++;
        const key = input.startsWith('hostile:') ? input : input.split('#')[0].replace(/\+fixup$/, '');
        const b = (s.byInput[key] ??= { runs: 0, ok: 0, inputError: 0 });
        b.runs++;
        if (r.outcome === 'ok') b.ok++;
        if (r.outcome === 'InputError') {
          b.inputError++;
          // Numbers vary with the mutation; the message shape is what matters for the report.
          const shape = r.detail.replace(/\d+/g, 'N').slice(0, 90);
          s.messages[shape] = (s.messages[shape] ?? 0) + 1;
        }
        if (bytes.length > 0) s.maxGrowthPerByte = Math.max(s.maxGrowthPerByte, r.growth / bytes.length);
        s.maxPeakBytes = Math.max(s.maxPeakBytes, r.peak);
        if (r.outcome === 'untyped' || r.outcome === 'alloc') findings.push({ caseName: c.name, input, outcome: r.outcome, detail: r.detail });
      };

      // The valid files themselves must read: otherwise every mutation "fails" for the wrong reason.
      for (let v = 0; v < 3; v++) {
        const bytes = c.makeValidFile(v);
        o.onStart?.(`${c.name} / valid#${v}`);
        const r = runOne(c, file, dir, bytes);
        if (r.outcome !== 'ok') findings.push({ caseName: c.name, input: `valid#${v}`, outcome: r.outcome, detail: `a valid file did not read: ${r.detail}` });
      }
      for (const h of c.hostile?.() ?? []) record(`hostile:${h.label}`, h.bytes);
      const valid = [0, 1, 2, 3].map((v) => c.makeValidFile(v));
      const mutators: Record<string, Mutator> = { ...MUTATORS, ...c.mutators };
      const names = Object.keys(mutators);
      for (let i = 0; i < o.perCase; i++) {
        const rng = new Rng(o.seed).fork(`${c.name}:${i}`);
        const m = names[i % names.length];
        const src = valid[rng.int(valid.length)];
        const other = valid[rng.int(valid.length)];
        // Stacked mutations now and then: a flipped bit inside a truncated file, and so on.
        let bytes = mutators[m](src, { rng, other, lengthFields: c.lengthFields?.(src) ?? [] });
        let label = m;
        if (rng.next() < 0.2) {
          const m2 = names[rng.int(names.length)];
          bytes = mutators[m2](bytes, { rng, other, lengthFields: c.lengthFields?.(bytes) ?? [] });
          label = `${m}+${m2}`;
        }
        if (c.fixup && rng.next() < 0.7) {
          bytes = c.fixup(bytes);
          label += '+fixup';
        }
        record(`${label}#seed=${o.seed},i=${i}`, bytes);
        s.mutations++;
      }
      s.ms = Date.now() - t0;
      summaries.push(s);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  return { summaries, findings };
}
