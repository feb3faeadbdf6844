/**
 * Entry of the job process (dist/job-process.js): the extension host forks one per job, so that a job runs the
 * CLI's engine on the main thread of its own process — ONNX Runtime loads there as it does in the CLI (it
 * cannot load in worker threads), the cell pool spreads cells over the cores, and an out-of-memory error or a
 * native abort ends this process, not the extension host. Messages: src/shared/job_process.ts.
 *
 * SIGTERM cancels like a `cancel` message (the runner stops between batches and removes its staging folder);
 * the host sends SIGKILL only when that does not end the process within its grace period.
 */
import { serveWorker, type PortLike } from './vscode/worker_loop';
import { runJobFile } from './engine/jobs/runner';
import type { RunEvent } from './shared/run_events';

function main(): void {
  const send = process.send?.bind(process);
  if (!send) {
    process.stderr.write('error: the job process talks to the extension host over IPC; start it with child_process.fork (dist/job-process.js)\n');
    process.exit(2);
  }
  const handlers: Array<(m: unknown) => void> = [];
  // Every message is handed to the IPC channel in order; the last one must have left before the channel closes.
  let flushed: Promise<void> = Promise.resolve();
  const port: PortLike = {
    postMessage: (m: RunEvent) => {
      flushed = new Promise((resolve) => send(m, undefined, {}, () => resolve()));
    },
    on: (_event, cb) => {
      handlers.push(cb);
    },
  };
  process.on('message', (m) => handlers.forEach((h) => h(m)));
  process.once('SIGTERM', () => handlers.forEach((h) => h({ type: 'cancel' })));
  // The host went away (closed window, crashed host): nobody reads the results, stop the job.
  process.once('disconnect', () => handlers.forEach((h) => h({ type: 'cancel' })));
  void serveWorker(port, runJobFile).then(async () => {
    await flushed;
    if (process.connected) process.disconnect();
    // Cell workers and ONNX Runtime's threads end with the process.
    process.exit(0);
  });
}

main();
