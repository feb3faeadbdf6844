/**
 * Child-process entry of the cell pool (src/engine/jobs/cell_pool.ts): one per core, each running cells of a
 * job on its own single-threaded backend and one ONNX Runtime thread. It talks to the pool over the IPC channel
 * only (structured-clone serialization, so image sets travel as typed arrays) and ends with the channel.
 */
import { buildAhead, serveCells } from './engine/jobs/cell_worker';
import { isCellAheadMessage, isCellInitMessage, type CellWorkerData, type CellWorkerReply } from './engine/jobs/cell_protocol';
import type { Model } from './engine/nn/model';

const send = process.send?.bind(process);
if (send) {
  // A spare process may be sent the victim ahead of `init` (cell_spawn.ts): it builds it while it waits.
  let ahead: Promise<Model> | undefined;
  const data = new Promise<CellWorkerData>((resolve) => {
    const first = (m: unknown) => {
      if (isCellAheadMessage(m)) {
        ahead ??= buildAhead(m);
        // Awaited with `init`; a failure here fails the process there, as building the victim from `init` would.
        ahead.catch(() => undefined);
        return;
      }
      if (!isCellInitMessage(m)) return;
      process.off('message', first);
      resolve(m.data);
    };
    process.on('message', first);
  });
  serveCells({ send: (m: CellWorkerReply) => void (process.connected && send(m)), onMessage: (fn) => process.on('message', fn) }, data, () => ahead).catch((e: unknown) => {
    // Startup failed (backend, victim): the pool sees the exit and this stderr line, and fails this process's cells.
    process.stderr.write(`cell process failed to start: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
  // The pool closed the channel (job done, cancelled, or the pool's process died): nothing more will come.
  process.on('disconnect', () => process.exit(0));
}
