/**
 * Cells side by side on several cores. The wasm backend runs one thread per process (its threaded build cannot
 * start workers under Node), so a job's cells are spread over child processes, one per core, each with its own
 * backend, one ONNX Runtime thread and its own copy of the victim, test and triggered sets; a cell is
 * independent of the others (its own random stream), so the rows equal the sequential run's. Processes rather
 * than worker threads because ONNX Runtime's native binding cannot load in worker threads: in a process of its
 * own, a cell trains its cross-entropy steps and evaluates through ONNX Runtime exactly as the main thread does.
 * A cell process that dies (out of memory, a native abort, a kill) fails the cell it was running, with the last
 * lines it wrote to stderr; the job and the other processes go on. Purified models are written by the cell
 * processes into the staging folder.
 *
 * A job of one cell (one defense, no GIC) gets one process too, on a machine of two cores or more: the cell
 * trains there while the job process evaluates the victim and projects the embeddings on a core of its own,
 * work that would otherwise come before and after the cell. The cell trains on half the cores: more threads add
 * little to a training step (ONNX Runtime's element-wise and copy kernels run on one thread: on two cores a
 * step of the zoo's PreAct-ResNet18 takes 300 ms on one thread, 270 on two). It never receives the test sets: it
 * sends its purified model back as ONNX, and the job process evaluates it on every core, by then free again.
 *
 * The first process may be one started with the job (cell_spawn.ts), which has loaded its bundle meanwhile.
 */
import type { ChildProcess } from 'node:child_process';
import type { Cell, CellOutcome, CoreOptions, PreparedJob, SaveTarget } from './core';
import type { ImageSet } from '../data/dataset';
import { isCellWorkerReply, type CellTaskMessage, type CellWorkerData } from './cell_protocol';
import { CancelledError } from '../errors';
import { ortWanted } from '../backend/onnx_runtime';
import { cellWorkerScript, forkCellProcess, stopCellProcess } from './cell_spawn';
import { cpuCores } from '../util/cores';

export interface CellPool {
  size: number;
  /** A pool of one process for a job's only cell: the job process evaluates the victim meanwhile. */
  lone: boolean;
  /** The cores the cell processes leave to the job process while they train. */
  freeCores: number;
  run(index: number, cell: Cell, aux: ImageSet, targets: SaveTarget[], progress: (d: number, t: number, m?: string) => void): Promise<CellOutcome>;
  /**
   * Settles once every message sent so far has been written to the processes' channels. Work that keeps this
   * thread busy (an evaluation through ONNX Runtime's synchronous runs) must wait for it, or the victim and test
   * sets would reach the processes only when that work ends.
   */
  delivered(): Promise<void>;
  /**
   * Every cell has been submitted and the job process has nothing more to compute while they run (the victim
   * evaluated, the embeddings projected): a lone cell takes all the cores, and in a pool the cores of processes
   * that run out of cells go to those still running theirs.
   */
  allSubmitted(): void;
  close(): Promise<void>;
}

/**
 * How many cell processes a job gets: one per core by default, only on the single-threaded CPU backends; one
 * for a lone cell (`lone`) where there are two cores or more and ONNX Runtime trains it.
 */
export function poolSize(o: Pick<CoreOptions, 'workers' | 'backend'>, cells: number, lone = false): number {
  if (o.backend.name !== 'wasm' && o.backend.name !== 'cpu') return 0; // native and GPU backends use the cores themselves
  if (o.backend.ort === 'webgpu') return 0; // the cells' ONNX Runtime sessions share the one GPU from this process
  const wanted = o.workers ?? cpuCores();
  if (lone) return cells === 1 && wanted >= 2 && ortWanted() ? 1 : 0;
  const n = Math.min(wanted, cells);
  return n >= 2 ? n : 0;
}

interface Slot {
  child: ChildProcess;
  /** Cells sent to this process and not answered yet, in the order it runs them. */
  inFlight: Task[];
  /** The last lines the process wrote to stderr: what a crash says. */
  stderr: string[];
  dead?: string;
  /** The ONNX Runtime threads this process was last granted (shareIdleCores); 0: none beyond its own. */
  granted: number;
}

/**
 * Cells queued in a process ahead of the one it runs, so that it never waits for this thread (which may be busy
 * calibrating or projecting embeddings when a cell ends).
 */
const AHEAD = 2;

/** Lines of a cell process's stderr kept for the row of a crash. */
const STDERR_LINES = 5;

interface Task {
  index: number;
  cell: Cell;
  aux: ImageSet;
  targets: SaveTarget[];
  progress: (d: number, t: number, m?: string) => void;
  resolve: (o: CellOutcome) => void;
  reject: (e: unknown) => void;
}

/** Why a cell process ended, in one line: out of memory where V8 said so, else the exit and its last stderr line. */
export function deathReason(code: number | null, signal: NodeJS.Signals | null, stderr: string[]): string {
  const text = stderr.join('\n');
  if (/heap out of memory|Reached heap limit|Allocation failed/i.test(text)) {
    return 'out of memory (the cell process reached its heap limit): lower the defense\'s batchSize, the auxiliary set\'s size or the number of workers';
  }
  const how = signal ? `was killed (${signal})` : `exited (code ${code})`;
  const last = stderr.filter((l) => l.trim()).at(-1);
  return `cell process ${how}${last ? `: ${last.trim().slice(0, 300)}` : ''}`;
}

/**
 * Start the cell processes for `cells` cells, or none (undefined) where they would not help. `lone`: the job's
 * only cell, which gets a process of its own so that the job process can evaluate the victim at the same time.
 */
export async function startCellPool(job: PreparedJob, o: CoreOptions, cells: number, lone = false): Promise<CellPool | undefined> {
  const size = poolSize(o, cells, lone);
  const script = cellWorkerScript();
  if (size < (lone ? 1 : 2) || !script) return undefined;
  const all = o.workers ?? cpuCores();
  // The processes share out the cores (a row does not depend on its thread count). A lone cell trains on half of
  // them (rounded up) and leaves the rest to the job process, which grants them back once it has evaluated the
  // victim and projected the embeddings (allSubmitted), and then evaluates on all of them.
  const ortThreads = ortWanted() ? (lone ? Math.ceil(all / 2) : Math.max(1, Math.floor(all / size))) : 0;
  // The first process may have been started with the job (cell_spawn.ts) and have loaded its bundle by now, and
  // built this victim from the copy sent ahead: its `init` leaves the victim out.
  const spare = o.spare?.take();
  const spareHasVictim = spare?.aheadOf === job.victim;
  const data: CellWorkerData = {
    backend: o.backend.name,
    victim: spareHasVictim && size === 1 ? undefined : { spec: job.victim.spec, normalize: job.victim.normalize, state: await job.victim.stateDict() },
    // A lone cell's purified model is evaluated by the job process (core.ts), which keeps the test sets.
    ...(lone ? {} : { test: job.test, triggered: job.triggered }),
    augment: job.augment,
    seeds: job.seeds,
    ortThreads,
    evalThreads: lone ? all : ortThreads,
  };
  const threads = (n: number) => (n === 1 ? '1 thread' : `${n} threads`);
  o.emit({
    type: 'log',
    message: lone
      ? `the cell in a process of its own, training with ONNX Runtime on ${threads(ortThreads)} while this one evaluates the victim, then on ${threads(all)} (and the purified model evaluated on ${threads(all)})`
      : `${size} cell processes${ortThreads ? `, each training and evaluating with ONNX Runtime (${threads(ortThreads)})` : ''}`,
  });
  const queue: Task[] = [];
  const slots: Slot[] = [];
  let sending: Promise<unknown>[] = [];
  const post = (child: ChildProcess, msg: CellTaskMessage) => {
    // With a callback, a failed send reaches the callback instead of the process's 'error' event: pass it on,
    // so that the process is marked dead as before.
    sending.push(
      new Promise<void>((resolve) =>
        child.send(msg, (err) => {
          if (err) child.emit('error', err);
          resolve();
        }),
      ),
    );
  };
  let closed = false;
  let cancelled = false;

  const pump = () => {
    // Least loaded live process first, each up to AHEAD cells.
    for (;;) {
      const live = slots.filter((s) => !s.dead && s.inFlight.length < AHEAD).sort((a, b) => a.inFlight.length - b.inFlight.length);
      if (live.length === 0 || queue.length === 0) break;
      const slot = live[0];
      const task = queue.shift()!;
      slot.inFlight.push(task);
      post(slot.child, { type: 'cell', index: task.index, cell: plainCell(task.cell), aux: task.aux, targets: task.targets });
    }
    // Every process died: what is left cannot run.
    if (slots.every((s) => s.dead)) for (const t of queue.splice(0)) t.resolve({ row: failedRow(t.cell, slots[0]?.dead ?? 'no cell process') });
  };

  /**
   * Once every cell has been handed out and the job process has nothing more to compute, the cores left idle go
   * to the processes still running cells: their sessions move to the threads at a later run (ort_threads.ts; a
   * row does not depend on its thread count). A lone cell so takes the job process's cores; in a pool, the
   * processes still running take the cores of those that have run out of cells, so the last cells of a job run on
   * the whole machine rather than on one core each.
   */
  let everyCellSubmitted = false;
  const shareIdleCores = () => {
    if (!ortThreads || !everyCellSubmitted || queue.length || closed || cancelled) return;
    const busy = slots.filter((s) => !s.dead && s.inFlight.length);
    if (!busy.length) return;
    const share = Math.floor(all / busy.length);
    const more = busy.filter((s) => share > Math.max(ortThreads, s.granted));
    if (!more.length) return;
    for (const s of more) {
      s.granted = share;
      if (s.child.connected) post(s.child, { type: 'threads', threads: share });
    }
    // The lone cell's move was announced when its process started.
    if (!lone) o.emit({ type: 'log', message: `no cell left to start: ${more.length === 1 ? `the cell process still running takes the idle cores (${threads(share)})` : `the ${more.length} cell processes still running take the idle cores (${threads(share)} each)`}` });
  };

  /** The process answered its oldest cell (it runs them in order). */
  const settle = (slot: Slot, fn: (t: Task) => void) => {
    const task = slot.inFlight.shift();
    if (task) fn(task);
    pump();
    shareIdleCores();
  };

  for (let i = 0; i < size; i++) {
    const child = (i === 0 ? spare?.child : undefined) ?? forkCellProcess(script);
    const slot: Slot = { child, inFlight: [], stderr: [], granted: 0 };
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      slot.stderr.push(...chunk.split('\n').filter((l) => l.trim()));
      slot.stderr.splice(0, Math.max(0, slot.stderr.length - STDERR_LINES));
    });
    child.on('message', (m: unknown) => {
      if (!isCellWorkerReply(m)) return;
      if (m.type === 'progress') slot.inFlight[0]?.progress(m.done, m.total, m.message);
      else if (m.type === 'need-test-sets') post(child, { type: 'test-sets', test: job.test, triggered: job.triggered });
      else if (m.type === 'done') settle(slot, (t) => t.resolve(m.outcome));
      else if (m.type === 'cancelled') settle(slot, (t) => t.reject(new CancelledError()));
    });
    const die = (why: string) => {
      if (slot.dead) return;
      slot.dead = why;
      // A crashed process fails the cell it was running; the cells queued behind it go to the other processes.
      const [current, ...rest] = slot.inFlight.splice(0);
      current?.resolve({ row: failedRow(current.cell, why) });
      queue.unshift(...rest);
      pump();
      shareIdleCores();
    };
    child.on('error', (e) => die(`cell process failed: ${e.message.split('\n')[0]}`));
    // 'close' comes after stderr has been read to its end, so the reason has the last lines.
    child.on('close', (code, signal) => {
      if (!closed && !cancelled) die(deathReason(code, signal, slot.stderr));
    });
    post(child, { type: 'init', data: i === 0 && spareHasVictim ? { ...data, victim: undefined } : data });
    slots.push(slot);
  }

  const onAbort = () => {
    cancelled = true;
    for (const s of slots) if (!s.dead && s.child.connected) s.child.send({ type: 'cancel' } satisfies CellTaskMessage);
    for (const t of queue.splice(0)) t.reject(new CancelledError());
  };
  o.signal?.addEventListener('abort', onAbort, { once: true });

  return {
    size,
    lone,
    freeCores: Math.max(1, all - size * Math.max(1, ortThreads)),
    run(index, cell, aux, targets, progress) {
      if (o.signal?.aborted) return Promise.reject(new CancelledError());
      return new Promise<CellOutcome>((resolve, reject) => {
        queue.push({ index, cell, aux, targets, progress, resolve, reject });
        pump();
      });
    },
    allSubmitted() {
      everyCellSubmitted = true;
      shareIdleCores();
    },
    async delivered() {
      const pending = sending;
      sending = [];
      await Promise.all(pending);
    },
    async close() {
      closed = true;
      o.signal?.removeEventListener('abort', onAbort);
      await Promise.all(slots.map((s) => stopCellProcess(s.child)));
    },
  };
}

/** A cell as plain data for the channel (the aux set travels separately, raw or calibrated). */
function plainCell(cell: Cell): Cell {
  return { aux: { name: cell.aux.name, type: cell.aux.type, seed: cell.aux.seed, set: undefined as never }, gic: cell.gic, defense: cell.defense, seed: cell.seed, stream: cell.stream };
}

function failedRow(cell: Cell, error: string): CellOutcome['row'] {
  return { aux: cell.aux.name, auxType: cell.aux.type, gic: cell.gic, defense: cell.defense.id, seed: cell.seed, seconds: 0, output: null, error };
}
