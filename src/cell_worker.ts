/**
 * worker_threads entry of the cell pool (src/engine/jobs/cell_pool.ts): one per core, each running cells of a
 * job on its own single-threaded backend.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { serveCells } from './engine/jobs/cell_worker';
import type { CellWorkerData } from './engine/jobs/cell_protocol';

if (parentPort) {
  const port = parentPort;
  serveCells(port, workerData as CellWorkerData).catch((e: unknown) => {
    // Startup failed (backend, victim): the pool sees the error and fails this worker's cells.
    throw e instanceof Error ? e : new Error(String(e));
  });
}
