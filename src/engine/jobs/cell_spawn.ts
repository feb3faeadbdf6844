/**
 * Starting cell processes (cell_pool.ts), and starting one ahead of the job. A cell process loads its bundle
 * (tensor backends, ONNX Runtime's binding, the defenses) before it can take the job's data: 0.35-0.65 s on a
 * two-core machine. The job process meanwhile loads its own modules, reads the job, the model and the data
 * (about a second for the zoo's FT job) and only then knows whether it wants a pool. A spare process forked when
 * the job starts does its loading in that second; the pool adopts it as its first process instead of forking
 * one, and a spare that no pool takes is ended with the job. This module loads nothing heavy, so that the CLI
 * can fork the spare before it loads the engine.
 */
import { fork, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { heapEnv } from '../util/heap_env';
import { cpuCores } from '../util/cores';
import type { CellAheadMessage } from './cell_protocol';

/** The bundled cell-process script: next to the running bundle (dist/), or dist/ of the source tree (tests). */
export function cellWorkerScript(): string | undefined {
  return [path.join(__dirname, 'cell-worker.js'), path.join(__dirname, '..', '..', '..', 'dist', 'cell-worker.js')].find((f) => fs.existsSync(f));
}

/** A cell process, idle until the pool's `init` message. */
export function forkCellProcess(script: string): ChildProcess {
  // The heap limit given to this process (a job process's --max-old-space-size) holds for each cell process too.
  const execArgv = process.execArgv.filter((a) => a.startsWith('--max-old-space-size'));
  // heapEnv: a cell's ONNX Runtime runs hand their outputs to JavaScript as new buffers at every step.
  return fork(script, [], { serialization: 'advanced', stdio: ['ignore', 'ignore', 'pipe', 'ipc'], execArgv, env: heapEnv(process.env) });
}

/** Ends a cell process: closes its channel (it exits on disconnect), then SIGKILL if it has not gone in 2 s. */
export function stopCellProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    if (child.connected) child.disconnect();
    else child.kill('SIGTERM');
  });
}

/**
 * One cell process started before the job knows whether it wants it. `take` hands it to a pool (once, and only
 * while it is alive); `dispose` ends it unless a pool took it. `sendAhead` gives it the victim as soon as the
 * model is loaded: it then builds the victim and its training graph (about 0.3 s for the zoo's width-16
 * PreAct-ResNet18) while the job process reads the data, and the pool's `init` leaves the victim out.
 */
export class SpareCellProcess {
  private child: ChildProcess | undefined;
  /** What the victim sent ahead was made from (the job's model), if it was sent. */
  private aheadOf: object | undefined;

  private constructor(child: ChildProcess) {
    this.child = child;
    // Drained until a pool listens, so that a spare that writes to stderr never blocks on a full pipe; a spare
    // that fails to start must not take the job process down with an unhandled 'error'.
    child.stderr?.resume();
    child.on('error', () => undefined);
  }

  /**
   * A spare where a pool could use one: two cores or more (and `workers` not below 2), ONNX Runtime not turned
   * off, the cell-process script built. Undefined otherwise.
   */
  static start(o: { workers?: number; device?: string } = {}): SpareCellProcess | undefined {
    if ((o.workers ?? cpuCores()) < 2 || o.device === 'gpu' || process.env.BACKDOOR_AUDIT_ORT === '0') return undefined;
    const script = cellWorkerScript();
    if (!script) return undefined;
    try {
      return new SpareCellProcess(forkCellProcess(script));
    } catch {
      return undefined;
    }
  }

  /** Whether the victim was sent ahead. */
  get victimSentAhead(): boolean {
    return this.aheadOf !== undefined;
  }

  /**
   * Send the victim ahead of `init` (once); `source` is the model it came from, for the pool to recognize.
   * Settles once the message is written, or after `patienceMs`: the caller's next work (reading the data) keeps
   * this thread busy, and the channel writes only while it is free, so unawaited the victim reached the process
   * with the data; but a process still loading its bundle reads nothing, and the job must not wait for it (the
   * rest is written later, still ahead of `init`).
   */
  sendAhead(message: CellAheadMessage, source: object, patienceMs = 150): Promise<void> {
    const child = this.child;
    if (!child || this.aheadOf || !child.connected) return Promise.resolve();
    this.aheadOf = source;
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, patienceMs);
      // A failed send shows as the process's death to the pool that takes it; the job goes on without the head start.
      child.send(message, () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /**
   * The process, if it is still alive and no pool has taken it yet, and the model whose victim it was sent
   * ahead; the caller owns the process from then on.
   */
  take(): { child: ChildProcess; aheadOf?: object } | undefined {
    const child = this.child;
    this.child = undefined;
    if (!child) return undefined;
    if (child.exitCode !== null || child.signalCode !== null || !child.connected) {
      void stopCellProcess(child);
      return undefined;
    }
    return { child, aheadOf: this.aheadOf };
  }

  /** Ends the process unless a pool took it: at once, since it holds nothing yet. */
  async dispose(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
    });
  }
}
