/**
 * The results panel's model: what a run has produced so far, folded from RunEvents (live) or taken whole
 * from a results.json (a finished run). Pure and DOM-free, so it is unit tested in Node and shared by the
 * panel and the self-contained report page.
 */
import type { RunEvent, RunInfo, Results } from '../src/shared/panel_messages';
import type { EmbeddingEntry, GicEntry, ReportedMetrics, ResultRow } from '../src/shared/results';

export type RunStatus = 'waiting' | 'running' | 'done' | 'failed' | 'cancelled' | 'interrupted';

export interface ViewState {
  run?: RunInfo;
  status: RunStatus;
  /** The tensor backend that trains and, once the baseline names it, what evaluates (`onnxruntime-cpu` or the backend). */
  backend?: { name: string; threads: number; evaluation?: string; adapter?: string };
  cells?: number;
  model?: Results['model'];
  baseline?: ReportedMetrics;
  rows: ResultRow[];
  gic: GicEntry[];
  embeddings: EmbeddingEntry[];
  detection?: Results['detection'];
  /** What the triggered set was (poisoned set without labels, unknown trigger, ...). */
  attack?: Results['attack'];
  progress?: { stage: string; done: number; total: number; message?: string };
  error?: string;
  /** The last few log lines, shown under the progress while a job runs. */
  log: string[];
}

export function emptyState(run?: RunInfo, status: RunStatus = 'waiting'): ViewState {
  return { run, status, rows: [], gic: [], embeddings: [], log: [] };
}

/** A cell: aux set, GIC, defense and (with repeated seeds) the seed. */
export function rowKey(r: Pick<ResultRow, 'aux' | 'gic' | 'defense' | 'seed'>): string {
  return `${r.aux}\u0000${r.gic ? 1 : 0}\u0000${r.defense}\u0000${r.seed ?? ''}`;
}

/** Replaces the entry with the same key, else appends: a re-sent event must not duplicate a cell. */
function upsert<T>(list: T[], item: T, key: (t: T) => string): T[] {
  const k = key(item);
  const i = list.findIndex((x) => key(x) === k);
  if (i < 0) return [...list, item];
  const copy = list.slice();
  copy[i] = item;
  return copy;
}

export function fromResults(run: RunInfo | undefined, r: Results): ViewState {
  return {
    ...emptyState(run, 'done'),
    backend: r.backend ? { name: r.backend.name, threads: r.backend.threads, ...(r.backend.evaluation ? { evaluation: r.backend.evaluation } : {}), ...(r.backend.adapter ? { adapter: r.backend.adapter } : {}) } : undefined,
    model: r.model,
    baseline: r.baseline,
    rows: r.rows ?? [],
    gic: r.gic ?? [],
    embeddings: r.embeddings ?? [],
    detection: r.detection,
    attack: r.attack,
    cells: r.rows?.length,
  };
}

const LOG_LINES = 5;

export function applyEvent(s: ViewState, e: RunEvent): ViewState {
  switch (e.type) {
    case 'started':
      return { ...emptyState(s.run, 'running'), backend: { name: e.backend, threads: e.threads }, cells: e.cells };
    case 'progress':
      return { ...s, status: 'running', progress: { stage: e.stage, done: e.done, total: e.total, message: e.message } };
    case 'log':
      return { ...s, log: [...s.log, e.message].slice(-LOG_LINES) };
    case 'baseline':
      return { ...s, model: e.model, baseline: e.baseline, backend: s.backend && e.evaluation ? { ...s.backend, evaluation: e.evaluation } : s.backend };
    case 'row':
      return { ...s, rows: upsert(s.rows, e.row, rowKey) };
    case 'gic':
      return { ...s, gic: upsert(s.gic, e.entry, (g) => `${g.aux}\u0000${g.seed ?? ''}`) };
    case 'embedding':
      return { ...s, embeddings: upsert(s.embeddings, e.entry, (x) => x.aux) };
    case 'done':
      // The final results are authoritative (the runner may have rounded or completed rows).
      return { ...fromResults(s.run, e.results), log: s.log };
    case 'failed':
      return { ...s, status: 'failed', error: e.error, progress: undefined };
    case 'cancelled':
      return { ...s, status: 'cancelled', progress: undefined };
    default:
      return s;
  }
}

/** Fraction of the job done, for the progress bar: finished cells, plus the running cell's share. */
export function fractionDone(s: ViewState): number | undefined {
  if (s.status === 'done') return 1;
  if (!s.cells) return undefined;
  const p = s.progress && s.progress.total > 0 ? Math.min(1, s.progress.done / s.progress.total) : 0;
  return Math.min(1, (s.rows.length + (s.rows.length < s.cells ? p : 0)) / s.cells);
}
