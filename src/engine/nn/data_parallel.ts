/**
 * Data-parallel training steps on the single-threaded CPU backends. The wasm backend computes on one thread
 * per process (its threaded build cannot start its pthreads under Node), so one training step is split over
 * replicas: this thread and N-1 worker threads, each holding an identical copy of the model.
 *
 * A step: the batch is cut into contiguous slices, one per replica; every replica computes the gradients of
 * the mean cross-entropy of its slice; this thread combines them weighted by slice size (which is exactly the
 * gradient of the whole batch's mean loss), applies the optimizer once, and publishes the new weights through
 * shared memory before the next step. Weights and gradients live in SharedArrayBuffers, so a step copies no
 * more than the slice of images sent to each worker. A step is asynchronous: while this thread waits for the
 * workers its event loop runs (cancellation, progress, a worker that dies).
 *
 * BatchNorm in training mode normalizes each slice with the slice's own statistics (as PyTorch's
 * DistributedDataParallel without SyncBatchNorm); the running statistics are updated from this thread's slice.
 * With BatchNorm frozen (or absent) a step equals the single-thread step up to float rounding.
 *
 * Only plain models take part: no inserted modules, no BatchNorm masks (those are not part of the
 * architecture spec the workers rebuild from). `DataParallel.supports` says so.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker, MessageChannel, type MessagePort } from 'node:worker_threads';
import type { BackendName } from '../backend';
import { JobError } from '../errors';
import type { Model } from './model';
import type { ForwardContext } from './module';
import type { Optimizer } from './optim';
import { crossEntropy, type BatchStepper } from './train';
import { isReplicaReply, type ReplicaInit, type ReplicaReply, type ReplicaRequest } from './replica_protocol';
import { cpuCores } from '../util/cores';

/** The bundled replica script: next to the running bundle (dist/), or dist/ of the source tree (tests). */
export function replicaScript(): string | undefined {
  return [path.join(__dirname, 'train-worker.js'), path.join(__dirname, '..', '..', '..', 'dist', 'train-worker.js')].find((f) => fs.existsSync(f));
}

/** Replicas a training loop gets by default: one per core on the single-threaded CPU backends, else 1. */
export function defaultReplicas(backend: BackendName): number {
  if (backend !== 'wasm' && backend !== 'cpu') return 1; // native and GPU backends use the cores themselves
  return cpuCores();
}

interface Replica {
  worker: Worker;
  port: MessagePort;
  grads: Float32Array;
  failed?: string;
  /** The step this replica is computing, settled by its reply or its death. */
  waiting?: { seq: number; resolve: (r: ReplicaReply) => void; reject: (e: Error) => void };
}

export class DataParallel implements BatchStepper {
  private seq = 0;
  private weightsDirty = true;
  private closed = false;

  private constructor(
    readonly model: Model,
    private readonly replicas: Replica[],
    private readonly weights: Float32Array,
  ) {}

  /** Whether `model` can be replicated from its architecture spec (no inserted modules, no BN masks). */
  static supports(model: Model): boolean {
    return model.insertions.length === 0 && model.batchNorms().every((b) => !b.mask);
  }

  /**
   * Start `replicas - 1` worker threads holding copies of `model`; undefined when that is not possible (one
   * replica, unsupported model, no bundled worker script), and the caller trains on this thread alone.
   */
  static async create(model: Model, replicas: number, backend: BackendName): Promise<DataParallel | undefined> {
    const script = replicaScript();
    if (replicas < 2 || !script || !DataParallel.supports(model)) return undefined;
    const params = model.root.namedParams();
    const total = params.reduce((s, [, p]) => s + p.variable.size, 0);
    const trainable = params.filter(([, p]) => p.trainable).reduce((s, [, p]) => s + p.variable.size, 0);
    const weightsBuf = new SharedArrayBuffer(total * 4);
    const started: Replica[] = [];
    try {
      for (let r = 1; r < replicas; r++) {
        const grads = new SharedArrayBuffer(trainable * 4);
        const { port1, port2 } = new MessageChannel();
        const init: ReplicaInit = { backend, spec: model.spec, normalize: model.normalize, weights: weightsBuf, grads, port: port2 };
        const worker = new Worker(script, { workerData: init, transferList: [port2] });
        worker.unref();
        const replica: Replica = { worker, port: port1, grads: new Float32Array(grads) };
        started.push(replica);
        const keys = await new Promise<string[]>((resolve, reject) => {
          const onMessage = (m: unknown) => {
            if (!isReplicaReply(m)) reject(new Error('training replica sent an unknown message'));
            else if (m.type === 'ready') resolve(m.keys);
            else if (m.type === 'error') reject(new Error(m.message));
          };
          port1.once('message', onMessage);
          worker.once('error', reject);
          worker.once('exit', (code) => reject(new Error(`training replica exited (code ${code}) before it was ready`)));
        });
        worker.removeAllListeners('error');
        worker.removeAllListeners('exit');
        // The replica rebuilt the same architecture: the same parameters in the same order, or nothing works.
        if (keys.join('\n') !== params.map(([k]) => k).join('\n')) throw new Error('training replica built a different parameter list');
        const fail = (why: string) => {
          replica.failed ??= why;
          replica.waiting?.reject(new JobError(`training replica failed: ${replica.failed}`));
          replica.waiting = undefined;
          port1.unref();
        };
        worker.on('error', (e) => fail(e.message.split('\n')[0]));
        worker.on('exit', (code) => fail(`exited with code ${code}`));
        port1.on('message', (m: unknown) => {
          if (!isReplicaReply(m) || m.type === 'ready' || m.seq !== replica.waiting?.seq) return;
          replica.waiting.resolve(m);
          replica.waiting = undefined;
          port1.unref();
        });
        // Idle until a step (adding the listener refs the port): an idle replica does not keep the process alive.
        port1.unref();
      }
    } catch {
      await Promise.all(started.map((r) => r.worker.terminate()));
      return undefined;
    }
    return new DataParallel(model, started, new Float32Array(weightsBuf));
  }

  /** Replicas taking part in a step, this thread included. */
  get size(): number {
    return this.replicas.length + 1;
  }

  /**
   * One optimizer step over the batch `x` [n, h, w, c] (flat) with integer `labels`; resolves to the batch's mean
   * loss. Trains all trainable variables of the model on the cross-entropy of its logits.
   */
  async step(optimizer: Optimizer, x: Float32Array, shape: [number, number, number], labels: Int32Array, bnTrain: boolean): Promise<number> {
    if (this.closed) throw new Error('data-parallel trainer is closed');
    const dead = this.replicas.find((r) => r.failed);
    if (dead) throw new JobError(`training replica failed: ${dead.failed}`);
    const n = labels.length;
    const size = shape[0] * shape[1] * shape[2];
    // Slices: this thread takes the remainder, workers equal shares; with fewer images than replicas the
    // workers sit the step out.
    const share = Math.floor(n / this.size);
    const own = n - share * this.replicas.length;
    if (this.weightsDirty) await this.publishWeights();
    const seq = ++this.seq;
    const busy: Array<{ replica: Replica; count: number; reply: Promise<ReplicaReply> }> = [];
    if (share > 0) {
      this.replicas.forEach((replica, r) => {
        const start = own + r * share;
        const request: ReplicaRequest = {
          type: 'step',
          seq,
          x: x.slice(start * size, (start + share) * size),
          shape: [share, shape[0], shape[1], shape[2]],
          y: labels.slice(start, start + share),
          bnTrain,
        };
        const reply = new Promise<ReplicaReply>((resolve, reject) => (replica.waiting = { seq, resolve, reject }));
        // Idle replicas do not keep the process alive; one that owes a reply does.
        replica.port.ref();
        replica.port.postMessage(request, [request.x.buffer as ArrayBuffer, request.y.buffer as ArrayBuffer]);
        busy.push({ replica, count: share, reply });
      });
    }
    const vars = this.model.trainableVariables();
    const ctx: ForwardContext = { training: bnTrain, bnUpdates: [] };
    const { value, grads } = tf.tidy(() => {
      const xs = tf.tensor4d(x.subarray(0, own * size), [own, shape[0], shape[1], shape[2]]);
      const ys = tf.tensor1d(labels.subarray(0, own), 'int32');
      return tf.variableGrads(() => crossEntropy(this.model.forward(xs, ctx), ys), vars);
    });
    // Running statistics from this thread's slice (they own the batch statistics tensors: apply them now, so
    // that a failed step does not leak them; training-mode forwards do not read them).
    for (const apply of ctx.bnUpdates!) apply();
    let lossSum: number;
    let combined: tf.Tensor[];
    try {
      try {
        lossSum = (await value.data())[0] * own;
      } finally {
        value.dispose();
      }
      for (const { reply, count } of busy) {
        const r = await reply;
        if (r.type === 'error') throw new JobError(`training replica failed: ${r.message}`);
        if (r.type === 'done') lossSum += r.loss * count;
      }
      // Sum of slice gradients weighted by slice size / batch size = gradient of the batch's mean loss.
      combined = tf.tidy(() => {
        let offset = 0;
        return vars.map((v) => {
          let g = tf.mul(grads[v.name], own / n);
          for (const { replica, count } of busy) {
            const part = tf.tensor(replica.grads.subarray(offset, offset + v.size), v.shape);
            g = tf.add(g, tf.mul(part, count / n));
          }
          offset += v.size;
          return g;
        });
      });
    } catch (e) {
      // The other replicas' replies still count as settled (their rejections are handled here).
      await Promise.allSettled(busy.map((b) => b.reply));
      throw e;
    } finally {
      tf.dispose(Object.values(grads));
    }
    optimizer.step(vars, combined);
    tf.dispose(combined);
    this.weightsDirty = true;
    const loss = lossSum / n;
    if (!Number.isFinite(loss)) throw new JobError('training diverged (loss is not finite)');
    return loss;
  }

  /** Copy every parameter and buffer into the shared weights (the workers read them at their next step). */
  private async publishWeights(): Promise<void> {
    const params = this.model.root.namedParams();
    const values = await Promise.all(params.map(([, p]) => p.variable.data()));
    let offset = 0;
    params.forEach(([, p], i) => {
      this.weights.set(values[i] as Float32Array, offset);
      offset += p.variable.size;
    });
    this.weightsDirty = false;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const r of this.replicas) {
      r.worker.removeAllListeners('exit');
      r.worker.removeAllListeners('error');
    }
    await Promise.all(this.replicas.map((r) => r.worker.terminate()));
  }
}
