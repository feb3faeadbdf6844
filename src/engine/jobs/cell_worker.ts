/**
 * The worker side of the cell pool (cell_pool.ts): rebuild the victim from its architecture and state_dict,
 * then run the cells it is sent with the same code as the sequential path (core.runCell) and send the rows back.
 */
import type { MessagePort } from 'node:worker_threads';
import { initBackend, type BackendName } from '../backend';
import { buildModel } from '../models';
import type { ArchSpec, Normalization } from '../nn/model';
import type { PtStateDict } from '../nn/module';
import type { ImageSet } from '../data/dataset';
import type { TriggeredSet } from '../metrics/evaluate';
import type { Augment } from '../nn/train';
import type { ReportedMetrics } from '../../shared/results';
import { emptyRow, runCell, type Cell, type CellOutcome, type SaveTarget } from './core';
import { CancelledError } from '../errors';
import { cellError } from './checks';

export interface CellWorkerData {
  backend: BackendName;
  victim: { spec: ArchSpec; normalize?: Normalization; state: PtStateDict };
  test: ImageSet;
  triggered: TriggeredSet;
  augment: Augment;
  seeds: number[];
  baseline: ReportedMetrics;
  /** ONNX Runtime threads for evaluation (0: on the worker's backend). */
  evalThreads: number;
  /** Send purified models back as ONNX for the main thread to evaluate (it has ONNX Runtime). */
  deferEvaluation: boolean;
}

export type CellTaskMessage = { type: 'cell'; index: number; cell: Cell; aux: ImageSet; targets: SaveTarget[] } | { type: 'cancel' };

export type CellWorkerReply =
  | { type: 'progress'; done: number; total: number; message?: string }
  | { type: 'done'; outcome: CellOutcome }
  | { type: 'cancelled' };

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
  port.on('message', (m: CellTaskMessage) => {
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
