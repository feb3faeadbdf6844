/**
 * The worker side of the cell pool (cell_pool.ts): rebuild the victim from its architecture and state_dict,
 * then run the cells it is sent (messages: cell_protocol.ts) with the same code as the sequential path (core.runCell) and send the rows back.
 */
import type { MessagePort } from 'node:worker_threads';
import { initBackend } from '../backend';
import { buildModel } from '../models';
import { emptyRow, runCell } from './core';
import { isCellTaskMessage, type CellWorkerData, type CellWorkerReply } from './cell_protocol';
import { CancelledError } from '../errors';
import { cellError } from './checks';

export async function serveCells(port: MessagePort, data: CellWorkerData): Promise<void> {
  await initBackend('cpu', data.backend);
  const victim = buildModel(data.victim.spec, data.victim.normalize);
  victim.loadStateDict(data.victim.state, 'cell worker');
  const job = { victim, test: data.test, triggered: data.triggered, augment: data.augment, seeds: data.seeds };
  const abort = new AbortController();
  // Progress is rate-limited: a defense reports every batch, the host needs a few updates a second.
  let lastProgress = 0;
  const progress = (done: number, total: number, message?: string) => {
    const now = Date.now();
    if (now - lastProgress < 200 && done < total) return;
    lastProgress = now;
    port.postMessage({ type: 'progress', done, total, message } satisfies CellWorkerReply);
  };
  // One cell at a time, in the order they come.
  let chain = Promise.resolve();
  port.on('message', (m: unknown) => {
    if (!isCellTaskMessage(m)) return;
    if (m.type === 'cancel') {
      abort.abort();
      return;
    }
    chain = chain.then(async () => {
      if (abort.signal.aborted) {
        port.postMessage({ type: 'cancelled' } satisfies CellWorkerReply);
        return;
      }
      try {
        const outcome = await runCell(job, m.cell, m.aux, data.baseline, m.index, abort.signal, progress, m.targets, data.evalThreads, data.deferEvaluation);
        port.postMessage({ type: 'done', outcome } satisfies CellWorkerReply, outcome.onnx ? [outcome.onnx.buffer as ArrayBuffer] : []);
      } catch (e) {
        if (e instanceof CancelledError || abort.signal.aborted) port.postMessage({ type: 'cancelled' } satisfies CellWorkerReply);
        else port.postMessage({ type: 'done', outcome: { row: { ...emptyRow(m.cell), error: cellError(e) } } } satisfies CellWorkerReply);
      }
    });
  });
}
