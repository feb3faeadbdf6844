/**
 * The job process's message loop, separated from its entry (src/job_process.ts) so that it is tested with a
 * fake port. Runs inside the job process: it must never import `vscode` (not available there).
 *
 * Contract with the host (src/shared/job_process.ts): the host sends one `run`, maybe a `cancel`; the
 * loop posts RunEvents and always ends the stream with exactly one of `done`, `failed`, `cancelled`, whatever
 * the runner itself emitted. Messages that do not parse are dropped.
 */
import * as path from 'node:path';
import type { RunEvent } from '../shared/run_events';
import { parseHostToJob } from '../shared/job_process';
import type { Results } from '../shared/results';
import type { RunOptions } from '../engine/jobs/runner';
import { CancelledError, oneLine } from '../engine/errors';

export interface PortLike {
  postMessage(m: RunEvent): void;
  on(event: 'message', cb: (m: unknown) => void): void;
}

export type RunFn = (jobPath: string, opts: RunOptions) => Promise<Results>;

const TERMINAL = new Set(['done', 'failed', 'cancelled']);

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
    port.on('message', (raw) => {
      const m = parseHostToJob(raw);
      if (!m) {
        // A run request that does not parse is a host of another build: fail the job rather than wait forever.
        if (!started && typeof raw === 'object' && raw !== null && (raw as { type?: unknown }).type === 'run') {
          started = true;
          post({ type: 'failed', error: 'the job process got a malformed run request (extension host and job process are of different builds?)', exitCode: 1 });
        }
        return;
      }
      if (m.type === 'cancel') {
        // Cancellation reaches the training loop between batches through the signal; the runner then throws
        // CancelledError and leaves no partial output.
        ac.abort();
        if (!started) post({ type: 'cancelled' });
        return;
      }
      if (started) return; // one job per worker: the host starts a fresh worker for the next one
      started = true;
      run(m.jobPath, { outDir: m.outDir, device: m.device, signal: ac.signal, overwrite: m.overwrite, limits: m.limits, onEvent: post }).then(
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
