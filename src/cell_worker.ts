/**
 * Child-process entry of the cell pool (src/engine/jobs/cell_pool.ts): one per core, each running cells of a
 * job on its own single-threaded backend and one ONNX Runtime thread. It talks to the pool over the IPC channel
 * only (structured-clone serialization, so image sets travel as typed arrays) and ends with the channel.
 */
import { serveCells } from './engine/jobs/cell_worker';
import { isCellInitMessage, type CellWorkerData, type CellWorkerReply } from './engine/jobs/cell_protocol';

const send = process.send?.bind(process);
if (send) {
  const data = new Promise<CellWorkerData>((resolve) => {
    const first = (m: unknown) => {
      if (!isCellInitMessage(m)) return;
      process.off('message', first);
      resolve(m.data);
    };
    process.on('message', first);
  });
  serveCells({ send: (m: CellWorkerReply) => void (process.connected && send(m)), onMessage: (fn) => process.on('message', fn) }, data).catch((e: unknown) => {
    // Startup failed (backend, victim): the pool sees the exit and this stderr line, and fails this process's cells.
    process.stderr.write(`cell process failed to start: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
  // The pool closed the channel (job done, cancelled, or the pool's process died): nothing more will come.
  process.on('disconnect', () => process.exit(0));
}
