/**
 * The run-event channel: what a running job reports, in order, to whoever follows it (the CLI's progress
 * lines, the extension host through the job process, the panel). Plain JSON; receivers check each event with
 * isRunEvent before acting on it.
 */
import type { Results, ResultRow, GicEntry, EmbeddingEntry, ReportedMetrics } from './results';

/** Events the runner emits while a job runs, in order; `done` or `failed` ends the stream. */
export type RunEvent =
  | { type: 'started'; jobPath: string; outDir: string; cells: number; backend: string; threads: number }
  | { type: 'progress'; stage: string; done: number; total: number; message?: string }
  | { type: 'log'; message: string }
  /** `evaluation`: what computed the metrics (results.json's `backend.evaluation`), so a client can name it before `done`. */
  | { type: 'baseline'; model: Results['model']; baseline: ReportedMetrics; evaluation?: Results['backend']['evaluation'] }
  | { type: 'row'; row: ResultRow }
  | { type: 'gic'; entry: GicEntry }
  | { type: 'embedding'; entry: EmbeddingEntry }
  | { type: 'done'; results: Results; resultsPath: string }
  | { type: 'failed'; error: string; exitCode: number }
  | { type: 'cancelled' };

export const RUN_EVENT_TYPES = ['started', 'progress', 'log', 'baseline', 'row', 'gic', 'embedding', 'done', 'failed', 'cancelled'] as const;

export function isRunEvent(v: unknown): v is RunEvent {
  return typeof v === 'object' && v !== null && RUN_EVENT_TYPES.includes((v as { type: string }).type as never);
}

