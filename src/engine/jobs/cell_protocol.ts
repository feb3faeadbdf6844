/**
 * The cell channel between the cell pool (cell_pool.ts, the job's process) and its cell processes
 * (cell_worker.ts): the data a cell process starts with, the tasks it is sent and its replies, each with a check
 * made on arrival. It
 * lives in the engine rather than in src/shared because its payloads are engine values (image sets, cells,
 * architecture specs) that only the engine's two sides of this channel know.
 */
import type { BackendName } from '../backend';
import type { ArchSpec, Normalization } from '../nn/model';
import type { PtStateDict } from '../nn/module';
import type { ImageSet } from '../data/dataset';
import type { TriggeredSet } from '../metrics/evaluate';
import type { Augment } from '../nn/train';
import type { Cell, CellOutcome, SaveTarget } from './core';

/** The victim as a cell process rebuilds it. */
export interface CellVictim {
  spec: ArchSpec;
  normalize?: Normalization;
  state: PtStateDict;
}

export interface CellWorkerData {
  backend: BackendName;
  /** Absent where an `ahead` message brought it to this process (cell_spawn.ts). */
  victim?: CellVictim;
  /**
   * The test sets, both or neither. Neither for a lone cell (cell_pool.ts): it sends its purified model back as
   * ONNX for the job process to evaluate, which holds the sets and by then has the cores free, and asks for them
   * (`need-test-sets`) only where the model cannot be exported. (The zoo's FT job spent 0.35-0.7 s sending
   * 60 MB of test images before its cell could start training, to be used at the cell's end.)
   */
  test?: ImageSet;
  triggered?: TriggeredSet;
  augment: Augment;
  seeds: number[];
  /** ONNX Runtime threads for each cell's training steps (0: everything on the backend). */
  ortThreads: number;
  /**
   * ONNX Runtime threads for each cell's evaluation: more than `ortThreads` for a lone cell, which trains on the
   * cores that the job process leaves it while that evaluates the victim, and evaluates on all of them.
   */
  evalThreads: number;
}

/**
 * Job process -> a spare cell process, before `init` and only then: the victim, so that the process builds it
 * and its training graph while the job process reads the data (cell_spawn.ts).
 */
export interface CellAheadMessage {
  type: 'ahead';
  backend: BackendName;
  victim: CellVictim;
}

/** Pool -> cell process: the job's shared part first, then cells (with their aux set and where to save), or cancel. */
export type CellTaskMessage =
  | { type: 'init'; data: CellWorkerData }
  | { type: 'cell'; index: number; cell: Cell; aux: ImageSet; targets: SaveTarget[] }
  | { type: 'test-sets'; test: ImageSet; triggered: TriggeredSet }
  /** The cores the job process has freed: training may use this many ONNX Runtime threads from now on. */
  | { type: 'threads'; threads: number }
  | { type: 'cancel' };

export type CellWorkerReply =
  | { type: 'progress'; done: number; total: number; message?: string }
  | { type: 'need-test-sets' }
  | { type: 'done'; outcome: CellOutcome }
  | { type: 'cancelled' };

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null;
}

/** Pool -> cell process: a cell to run (with its aux set and where to save), the test sets it asked for, more threads, or cancel. */
export function isCellTaskMessage(v: unknown): v is Exclude<CellTaskMessage, { type: 'init' }> {
  if (!isObj(v)) return false;
  if (v.type === 'cancel') return true;
  if (v.type === 'test-sets') return isObj(v.test) && isObj(v.triggered);
  if (v.type === 'threads') return typeof v.threads === 'number' && Number.isInteger(v.threads) && v.threads >= 1;
  return v.type === 'cell' && typeof v.index === 'number' && isObj(v.cell) && isObj(v.aux) && Array.isArray(v.targets);
}

/** Pool -> cell process: the job's shared part (victim, test sets), sent once, first. */
export function isCellInitMessage(v: unknown): v is Extract<CellTaskMessage, { type: 'init' }> {
  if (!isObj(v) || v.type !== 'init' || !isObj(v.data)) return false;
  const d = v.data;
  const testSets = (isObj(d.test) && isObj(d.triggered)) || (d.test === undefined && d.triggered === undefined);
  return typeof d.backend === 'string' && (d.victim === undefined || isObj(d.victim)) && testSets && Array.isArray(d.seeds) && typeof d.ortThreads === 'number' && typeof d.evalThreads === 'number';
}

/** Job process -> spare cell process: the victim ahead of `init`. */
export function isCellAheadMessage(v: unknown): v is CellAheadMessage {
  return isObj(v) && v.type === 'ahead' && typeof v.backend === 'string' && isObj(v.victim) && isObj(v.victim.spec) && v.victim.state instanceof Map;
}

/** Cell process -> pool: progress of the running cell, its outcome, or that it stopped on cancel. */
export function isCellWorkerReply(v: unknown): v is CellWorkerReply {
  if (!isObj(v)) return false;
  switch (v.type) {
    case 'progress':
      return typeof v.done === 'number' && typeof v.total === 'number' && (v.message === undefined || typeof v.message === 'string');
    case 'done':
      return isObj(v.outcome) && isObj(v.outcome.row);
    case 'cancelled':
    case 'need-test-sets':
      return true;
    default:
      return false;
  }
}
