/**
 * Cells side by side on several cores. The wasm backend runs one thread per process (its threaded build cannot
 * start workers under Node), so a job's cells are spread over worker threads, each with its own backend and its
 * own copy of the victim, test and triggered sets; a cell is independent of the others (its own random stream),
 * so the rows equal the sequential run's. Purified models are written by the worker into the staging folder.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { ReportedMetrics } from '../../shared/results';
import type { Cell, CellOutcome, CoreOptions, PreparedJob, SaveTarget } from './core';
import type { ImageSet } from '../data/dataset';
import { isCellWorkerReply, type CellTaskMessage, type CellWorkerData } from './cell_protocol';
import { CancelledError, oneLine } from '../errors';
import { cellError, isOutOfMemory } from './checks';
import { ortWanted } from '../backend/onnx_runtime';
import { der, evaluateOnnx, reported } from '../metrics/evaluate';

export interface CellPool {
  size: number;
  run(index: number, cell: Cell, aux: ImageSet, targets: SaveTarget[], progress: (d: number, t: number, m?: string) => void): Promise<CellOutcome>;
  close(): Promise<void>;
}

/** The bundled worker script: next to the running bundle (dist/), or dist/ of the source tree (tests). */
export function cellWorkerScript(): string | undefined {
  return [path.join(__dirname, 'cell-worker.js'), path.join(__dirname, '..', '..', '..', 'dist', 'cell-worker.js')].find((f) => fs.existsSync(f));
}

/** How many workers a job gets: one per core by default, only on the single-threaded CPU backends. */
export function poolSize(o: Pick<CoreOptions, 'workers' | 'backend'>, cells: number): number {
  if (o.backend.name !== 'wasm' && o.backend.name !== 'cpu') return 0; // native and GPU backends use the cores themselves
  const wanted = o.workers ?? (typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length);
  const n = Math.min(wanted, cells);
  return n >= 2 ? n : 0;
}

interface Slot {
  worker: Worker;
  /** Cells sent to this worker and not answered yet, in the order it runs them. */
  inFlight: Task[];
  dead?: string;
}

/**
 * Cells queued in a worker ahead of the one it runs, so that it never waits for this thread (which may be busy
 * calibrating or projecting embeddings when a cell ends).
 */
const AHEAD = 2;

interface Task {
  index: number;
  cell: Cell;
  aux: ImageSet;
  targets: SaveTarget[];
  progress: (d: number, t: number, m?: string) => void;
  resolve: (o: CellOutcome | Promise<CellOutcome>) => void;
  reject: (e: unknown) => void;
}

export async function startCellPool(job: PreparedJob, baseline: ReportedMetrics, o: CoreOptions, cells: number): Promise<CellPool | undefined> {
  const size = poolSize(o, cells);
  const script = cellWorkerScript();
  if (size < 2 || !script) return undefined;
  const data: CellWorkerData = {
    backend: o.backend.name,
    victim: { spec: job.victim.spec, normalize: job.victim.normalize, state: job.victim.stateDict() },
    test: job.test,
    triggered: job.triggered,
    augment: job.augment,
    seeds: job.seeds,
    baseline,
    // ONNX Runtime loads on the main thread only (see ort_eval.ts): workers send their purified models back as
    // ONNX and this thread evaluates them, or they evaluate on their own backend when it has no ONNX Runtime.
    evalThreads: 0,
    deferEvaluation: ortWanted(),
  };
  if (data.deferEvaluation) o.emit({ type: 'log', message: `${size} cell workers; their purified models are evaluated with ONNX Runtime in this thread` });
  const queue: Task[] = [];
  const slots: Slot[] = [];
  let closed = false;
  let cancelled = false;

  const pump = () => {
    // Least loaded live worker first, each up to AHEAD cells.
    for (;;) {
      const live = slots.filter((s) => !s.dead && s.inFlight.length < AHEAD).sort((a, b) => a.inFlight.length - b.inFlight.length);
      if (live.length === 0 || queue.length === 0) break;
      const slot = live[0];
      const task = queue.shift()!;
      slot.inFlight.push(task);
      const msg: CellTaskMessage = { type: 'cell', index: task.index, cell: plainCell(task.cell), aux: task.aux, targets: task.targets };
      slot.worker.postMessage(msg);
    }
    // Every worker died: what is left cannot run.
    if (slots.every((s) => s.dead)) for (const t of queue.splice(0)) t.resolve({ row: failedRow(t.cell, slots[0]?.dead ?? 'no cell worker') });
  };

  /** The worker answered its oldest cell (it runs them in order). */
  const settle = (slot: Slot, fn: (t: Task) => void) => {
    const task = slot.inFlight.shift();
    if (task) fn(task);
    pump();
  };

  for (let i = 0; i < size; i++) {
    const worker = new Worker(script, { workerData: data });
    const slot: Slot = { worker, inFlight: [] };
    worker.on('message', (m: unknown) => {
      if (!isCellWorkerReply(m)) return;
      if (m.type === 'progress') slot.inFlight[0]?.progress(m.done, m.total, m.message);
      else if (m.type === 'done') settle(slot, (t) => t.resolve(m.outcome.onnx ? evaluateHere(m.outcome) : m.outcome));
      else if (m.type === 'cancelled') settle(slot, (t) => t.reject(new CancelledError()));
    });
    const die = (why: string) => {
      if (slot.dead) return;
      slot.dead = why;
      // A crashed worker (out of memory, say) fails the cell it was running; the cells queued behind it go to
      // the other workers.
      const [current, ...rest] = slot.inFlight.splice(0);
      current?.resolve({ row: failedRow(current.cell, why) });
      queue.unshift(...rest);
      pump();
    };
    // A worker past its heap limit (ERR_WORKER_OUT_OF_MEMORY) is reported as out of memory, with what to lower.
    worker.on('error', (e) => die(isOutOfMemory(e) ? cellError(e) : `cell worker failed: ${e.message.split('\n')[0]}`));
    worker.on('exit', (code) => {
      if (!closed && !cancelled) die(`cell worker exited (code ${code})`);
    });
    slots.push(slot);
  }

  // Evaluations of workers' models, one at a time on one ONNX Runtime thread (the workers use the cores).
  let evaluations: Promise<unknown> = Promise.resolve();
  const evaluateHere = (out: CellOutcome): Promise<CellOutcome> => {
    const { onnx, ...outcome } = out;
    const run = evaluations.then(async () => {
      const t0 = Date.now();
      try {
        const m = reported(await evaluateOnnx(onnx!, job.victim.inputShape, job.victim.numClasses, job.test, job.triggered, o.signal, 1, 1024), job.triggered);
        Object.assign(outcome.row, m, { der: der(baseline, m) });
      } catch (e) {
        if (e instanceof CancelledError) throw e;
        outcome.row.error = `evaluation failed: ${oneLine(e)}`;
      }
      outcome.row.seconds += (Date.now() - t0) / 1000;
      return outcome;
    });
    evaluations = run.catch(() => undefined);
    return run;
  };

  const onAbort = () => {
    cancelled = true;
    for (const s of slots) s.worker.postMessage({ type: 'cancel' } satisfies CellTaskMessage);
    for (const t of queue.splice(0)) t.reject(new CancelledError());
  };
  o.signal?.addEventListener('abort', onAbort, { once: true });

  return {
    size,
    run(index, cell, aux, targets, progress) {
      if (o.signal?.aborted) return Promise.reject(new CancelledError());
      return new Promise<CellOutcome>((resolve, reject) => {
        queue.push({ index, cell, aux, targets, progress, resolve, reject });
        pump();
      });
    },
    async close() {
      closed = true;
      o.signal?.removeEventListener('abort', onAbort);
      await Promise.all(slots.map((s) => s.worker.terminate()));
    },
  };
}

/** A cell as plain data for postMessage (the aux set travels separately, raw or calibrated). */
function plainCell(cell: Cell): Cell {
  return { aux: { name: cell.aux.name, type: cell.aux.type, seed: cell.aux.seed, set: undefined as never }, gic: cell.gic, defense: cell.defense, seed: cell.seed, stream: cell.stream };
}

function failedRow(cell: Cell, error: string): CellOutcome['row'] {
  return { aux: cell.aux.name, auxType: cell.aux.type, gic: cell.gic, defense: cell.defense.id, seed: cell.seed, seconds: 0, output: null, error };
}
