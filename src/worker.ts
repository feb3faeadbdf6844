/**
 * worker_threads entry of the extension's job runner: the extension host starts one worker per job so that
 * training never blocks the host thread, and so that a job's tensors are freed with the worker.
 */
import { parentPort } from 'node:worker_threads';
import { serveWorker } from './vscode/workerLoop';
import { runJobFile } from './engine/jobs/runner';

if (parentPort) {
  const port = parentPort;
  void serveWorker(port, runJobFile).then(() => {
    // Let the last message flush, then end: the host treats the exit as the end of the job.
    setImmediate(() => port.close());
  });
}
