/**
 * The cell side of the cell pool (cell_pool.ts), run in a child process: rebuild the victim from its
 * architecture and state_dict, then run the cells it is sent (messages: cell_protocol.ts) with the same code as
 * the sequential path (core.runCell) and send the rows back. Being a process of its own, it loads ONNX Runtime
 * (which cannot live in worker threads), so its cells train and evaluate through it as the main thread does.
 */
import { initBackend } from '../backend';
import { buildModel } from '../models';
import { emptyRow, runCell, type CellTestSets } from './core';
import type { ImageSet } from '../data/dataset';
import type { TriggeredSet } from '../metrics/evaluate';
import { isCellTaskMessage, type CellAheadMessage, type CellVictim, type CellWorkerData, type CellWorkerReply } from './cell_protocol';
import { CancelledError } from '../errors';
import { cellError } from './checks';
import { OrtTrainer } from '../nn/ort_train';
import { expectOrtThreads, grantOrtThreads } from '../nn/ort_threads';
import type { Model } from '../nn/model';

/** The two directions of the channel to the pool (the process's IPC channel). */
export interface CellChannel {
  send(m: CellWorkerReply): void;
  onMessage(fn: (m: unknown) => void): void;
}

function buildVictim(v: CellVictim): Model {
  const victim = buildModel(v.spec, v.normalize);
  victim.loadStateDict(v.state, 'cell process');
  return victim;
}

/**
 * The victim sent ahead of `init` (cell_spawn.ts), built now on the job's backend, and the training graph of its
 * clones (what the fine-tuning defenses train), so that the first cell starts training as soon as it arrives.
 * A graph ONNX Runtime cannot take only costs the head start: the trainer finds out again when it needs one.
 */
export async function buildAhead(m: CellAheadMessage): Promise<Model> {
  await initBackend('cpu', m.backend);
  const victim = buildVictim(m.victim);
  await OrtTrainer.prepare(victim, { bnTrain: true }).catch(() => false);
  return victim;
}

/**
 * Serve cells on `channel` once `data` (the job's shared part) has arrived. The listener is registered at once
 * so that cells the pool sends while the backend starts are queued, not dropped. `ahead`: the victim built
 * from an `ahead` message, where one came before `init` (which then leaves the victim out).
 */
export function serveCells(channel: CellChannel, data: Promise<CellWorkerData>, ahead?: () => Promise<Model> | undefined): Promise<void> {
  const abort = new AbortController();
  // Progress is rate-limited: a defense reports every batch, the pool needs a few updates a second.
  let lastProgress = 0;
  const progress = (done: number, total: number, message?: string) => {
    const now = Date.now();
    if (now - lastProgress < 200 && done < total) return;
    lastProgress = now;
    channel.send({ type: 'progress', done, total, message });
  };
  // Without the test sets (a lone cell) they are asked for only where a purified model cannot be exported.
  let testSets: Promise<{ test: ImageSet; triggered: TriggeredSet }> | undefined;
  let receiveTestSets: ((sets: { test: ImageSet; triggered: TriggeredSet }) => void) | undefined;
  const fetchTestSets = () =>
    (testSets ??= new Promise((resolve, reject) => {
      if (abort.signal.aborted) return reject(new CancelledError());
      abort.signal.addEventListener('abort', () => reject(new CancelledError()), { once: true });
      receiveTestSets = resolve;
      channel.send({ type: 'need-test-sets' });
    }));
  const ready = data.then(async (d) => {
    // The victim sent ahead first (its backend start must not overlap this one's). Where `init` brings the victim
    // anyway, a failed build ahead costs nothing.
    const built = ahead?.();
    let aheadVictim: Model | undefined;
    try {
      aheadVictim = built && (await built);
    } catch (e) {
      if (!d.victim) throw e;
    }
    await initBackend('cpu', d.backend);
    // A lone cell evaluates on more threads than it trains on: the job process grants them to training too once
    // its own evaluation ends.
    if (d.evalThreads > d.ortThreads && d.ortThreads > 0) expectOrtThreads(d.evalThreads);
    let victim: Model;
    if (d.victim) {
      aheadVictim?.dispose();
      victim = buildVictim(d.victim);
    } else if (aheadVictim) victim = aheadVictim;
    else throw new Error('the job sent no victim');
    const sets: CellTestSets = d.test && d.triggered ? { test: d.test, triggered: d.triggered } : { fetchTestSets };
    return { d, job: { victim, augment: d.augment, seeds: d.seeds, ...sets } };
  });
  // One cell at a time, in the order they come.
  let chain: Promise<unknown> = ready;
  channel.onMessage((m: unknown) => {
    if (!isCellTaskMessage(m)) return;
    if (m.type === 'cancel') {
      abort.abort();
      return;
    }
    if (m.type === 'test-sets') {
      receiveTestSets?.({ test: m.test, triggered: m.triggered });
      return;
    }
    if (m.type === 'threads') {
      grantOrtThreads(m.threads);
      return;
    }
    chain = chain.then(async () => {
      const { d, job } = await ready;
      if (abort.signal.aborted) {
        channel.send({ type: 'cancelled' });
        return;
      }
      try {
        const outcome = await runCell(job, m.cell, m.aux, undefined, m.index, abort.signal, progress, m.targets, d.ortThreads, d.evalThreads);
        channel.send({ type: 'done', outcome });
      } catch (e) {
        if (e instanceof CancelledError || abort.signal.aborted) channel.send({ type: 'cancelled' });
        else channel.send({ type: 'done', outcome: { row: { ...emptyRow(m.cell), error: cellError(e) } } });
      }
    });
  });
  return ready.then(() => undefined);
}
