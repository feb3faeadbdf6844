/**
 * The channel between the extension host and a job process (dist/job-process.js, forked once per job): the
 * host sends `run`, maybe `cancel`; the job process answers with the runner's RunEvents and ends with exactly
 * one of `done`, `failed`, `cancelled`. Both sides parse what they receive here, by exact keys and value types,
 * before they act on it: a message that does not fit is dropped (a stray line of a native library, a
 * mismatched build of the other side), never half-trusted.
 */
import type { RunEvent } from './run_events';

export type Device = 'auto' | 'gpu' | 'cpu';

/** Host -> job process. */
export type HostToJob =
  | { type: 'run'; jobPath: string; outDir: string; device?: Device; overwrite?: boolean; limits?: { maxModelMB?: number; maxDataMB?: number } }
  | { type: 'cancel' };

/** Job process -> host: the runner's events, as the CLI's progress reporter gets them. */
export type JobToHost = RunEvent;

type Check = (v: unknown) => boolean;

const str: Check = (v) => typeof v === 'string';
const num: Check = (v) => typeof v === 'number' && Number.isFinite(v);
const count: Check = (v) => typeof v === 'number' && Number.isInteger(v) && v >= 0;
const obj: Check = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);
const opt = (c: Check): Check & { optional: true } => Object.assign((v: unknown) => v === undefined || c(v), { optional: true as const });
const megabytes: Check = (v) => typeof v === 'number' && Number.isFinite(v) && v >= 0;

/**
 * True when `v` is an object whose keys are exactly those of `shape` (optional ones may be missing) and every
 * value passes its check.
 */
function fits(v: unknown, shape: Record<string, Check & { optional?: true }>): v is Record<string, unknown> {
  if (!obj(v)) return false;
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!(k in shape)) return false;
  for (const [k, c] of Object.entries(shape)) {
    if (!(k in o) && !c.optional) return false;
    if (!c(o[k])) return false;
  }
  return true;
}

/** A host message as the job process receives it, or undefined when it is not one. */
export function parseHostToJob(v: unknown): HostToJob | undefined {
  if (!obj(v)) return undefined;
  const type = (v as { type?: unknown }).type;
  if (type === 'cancel') return fits(v, { type: str }) ? { type: 'cancel' } : undefined;
  if (type !== 'run') return undefined;
  const ok = fits(v, {
    type: str,
    jobPath: str,
    outDir: str,
    device: opt((d) => d === 'auto' || d === 'gpu' || d === 'cpu'),
    overwrite: opt((b) => typeof b === 'boolean'),
    limits: opt((l) => fits(l, { maxModelMB: opt(megabytes), maxDataMB: opt(megabytes) })),
  });
  return ok ? (v as HostToJob) : undefined;
}

const row: Check = (r) => obj(r) && str((r as { aux?: unknown }).aux) && str((r as { defense?: unknown }).defense) && typeof (r as { gic?: unknown }).gic === 'boolean';
const entryOf: Check = (e) => obj(e) && str((e as { aux?: unknown }).aux);

/** The shape of each event the job process may send (the payloads' inner fields are the results contract's). */
const EVENTS: Record<RunEvent['type'], Record<string, Check & { optional?: true }>> = {
  started: { type: str, jobPath: str, outDir: str, cells: count, backend: str, threads: count },
  progress: { type: str, stage: str, done: num, total: num, message: opt(str) },
  log: { type: str, message: str },
  baseline: { type: str, model: obj, baseline: obj, evaluation: opt(str) },
  row: { type: str, row },
  gic: { type: str, entry: entryOf },
  embedding: { type: str, entry: entryOf },
  done: { type: str, results: (r) => obj(r) && (r as { schema?: unknown }).schema === 'backdoor-audit/results@1' && Array.isArray((r as { rows?: unknown }).rows), resultsPath: str },
  failed: { type: str, error: str, exitCode: (c) => c === 1 || c === 2 },
  cancelled: { type: str },
};

/** A job-process message as the host receives it, or undefined when it is not one. */
export function parseJobToHost(v: unknown): JobToHost | undefined {
  if (!obj(v)) return undefined;
  const type = (v as { type?: unknown }).type;
  if (typeof type !== 'string' || !Object.prototype.hasOwnProperty.call(EVENTS, type)) return undefined;
  return fits(v, EVENTS[type as RunEvent['type']]) ? (v as JobToHost) : undefined;
}

/** Whether an event ends the job's stream. */
export function isTerminal(e: { type: string }): boolean {
  return e.type === 'done' || e.type === 'failed' || e.type === 'cancelled';
}
