/**
 * The cell channel between the cell pool (cell_pool.ts, the job's thread) and its workers (cell_worker.ts):
 * the data a worker starts with, the tasks it is sent and its replies, each with a check made on arrival. It
 * lives in the engine rather than in src/shared because its payloads are engine values (image sets, cells,
 * architecture specs) that only the engine's two sides of this channel know.
 */
import type { BackendName } from '../backend';
import type { ArchSpec, Normalization } from '../nn/model';
import type { PtStateDict } from '../nn/module';
import type { ImageSet } from '../data/dataset';
import type { TriggeredSet } from '../metrics/evaluate';
import type { Augment } from '../nn/train';
import type { ReportedMetrics } from '../../shared/results';
import type { Cell, CellOutcome, SaveTarget } from './core';

export interface CellWorkerData {
  backend: BackendName;
  victim: { spec: ArchSpec; normalize?: Normalization; state: PtStateDict };
  test: ImageSet;
  triggered: TriggeredSet;
  augment: Augment;
  seeds: number[];
  baseline: ReportedMetrics;
  /** ONNX Runtime threads for evaluation (0: on the worker's backend). */
  evalThreads: number;
  /** Send purified models back as ONNX for the main thread to evaluate (it has ONNX Runtime). */
  deferEvaluation: boolean;
}

export type CellTaskMessage = { type: 'cell'; index: number; cell: Cell; aux: ImageSet; targets: SaveTarget[] } | { type: 'cancel' };

export type CellWorkerReply =
  | { type: 'progress'; done: number; total: number; message?: string }
  | { type: 'done'; outcome: CellOutcome }
  | { type: 'cancelled' };

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null;
}

/** Pool -> worker: a cell to run (with its aux set and where to save), or cancel. */
export function isCellTaskMessage(v: unknown): v is CellTaskMessage {
  if (!isObj(v)) return false;
  if (v.type === 'cancel') return true;
  return v.type === 'cell' && typeof v.index === 'number' && isObj(v.cell) && isObj(v.aux) && Array.isArray(v.targets);
}

/** Worker -> pool: progress of the running cell, its outcome, or that it stopped on cancel. */
export function isCellWorkerReply(v: unknown): v is CellWorkerReply {
  if (!isObj(v)) return false;
  switch (v.type) {
    case 'progress':
      return typeof v.done === 'number' && typeof v.total === 'number' && (v.message === undefined || typeof v.message === 'string');
    case 'done':
      return isObj(v.outcome) && isObj(v.outcome.row);
    case 'cancelled':
      return true;
    default:
      return false;
  }
}
