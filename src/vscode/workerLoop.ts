/**
 * The job worker's message loop, separated from the `worker_threads` entry (src/worker.ts) so that it is
 * tested with a fake port. Runs inside the worker: it must never import `vscode` (not available there).
 *
 * Contract with the host: the host posts one `run`, maybe a `cancel`; the worker posts RunEvents and always
 * ends the stream with exactly one of `done`, `failed`, `cancelled`, whatever the runner itself emitted.
 */
import * as path from 'node:path';
import type { RunEvent, WorkerRequest } from '../protocol';
import type { Results } from '../engine/jobs/results';
import type { RunOptions } from '../engine/jobs/runner';
import { CancelledError, oneLine } from '../engine/errors';

export interface PortLike {
  postMessage(m: RunEvent): void;
  on(event: 'message', cb: (m: unknown) => void): void;
}

export type RunFn = (jobPath: string, opts: RunOptions) => Promise<Results>;

const TERMINAL = new Set(['done', 'failed', 'cancelled']);

function isRequest(v: unknown): v is WorkerRequest {
  const r = v as WorkerRequest;
  if (typeof r !== 'object' || r === null) return false;
  if (r.type === 'cancel') return true;
  return r.type === 'run' && typeof r.jobPath === 'string' && typeof r.outDir === 'string';
}

/** Size limits from the host: only finite numbers >= 0 are taken; anything else leaves the engine's default. */
function limitsOf(v: unknown): RunOptions['limits'] {
  if (typeof v !== 'object' || v === null) return undefined;
  const mb = (x: unknown) => (typeof x === 'number' && Number.isFinite(x) && x >= 0 ? x : undefined);
  const l = v as Record<string, unknown>;
  return { maxModelMB: mb(l.maxModelMB), maxDataMB: mb(l.maxDataMB) };
}

/** Serves one job on `port`; resolves when the terminal event has been posted. */
export function serveWorker(port: PortLike, run: RunFn): Promise<void> {
  return new Promise((resolve) => {
    const ac = new AbortController();
    let started = false;
    let ended = false;
    const post = (e: RunEvent) => {
      if (ended) return;
      if (TERMINAL.has(e.type)) ended = true;
      port.postMessage(e);
      if (ended) resolve();
    };
    port.on('message', (m) => {
      if (!isRequest(m)) return;
      if (m.type === 'cancel') {
        // Cancellation reaches the training loop between batches through the signal; the runner then throws
        // CancelledError and leaves no partial output.
        ac.abort();
        if (!started) post({ type: 'cancelled' });
        return;
      }
      if (started) return; // one job per worker: the host starts a fresh worker for the next one
      started = true;
      const device = m.device === 'gpu' || m.device === 'cpu' || m.device === 'auto' ? m.device : undefined;
      run(m.jobPath, { outDir: m.outDir, device, signal: ac.signal, overwrite: m.overwrite, limits: limitsOf(m.limits), onEvent: post }).then(
        (results) => post({ type: 'done', results, resultsPath: path.join(m.outDir, 'results.json') }),
        (err: unknown) => {
          if (err instanceof CancelledError || (ac.signal.aborted && (err as Error)?.name === 'CancelledError')) post({ type: 'cancelled' });
          else if (ac.signal.aborted) post({ type: 'cancelled' });
          else post({ type: 'failed', error: oneLine(err), exitCode: (err as { exitCode?: number })?.exitCode === 2 ? 2 : 1 });
        },
      );
    });
  });
}
