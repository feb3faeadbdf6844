/**
 * The worker side of data-parallel training (data_parallel.ts): rebuild the model from its architecture spec,
 * then for every step read the shared weights, compute the gradients of the mean cross-entropy of the slice
 * it was sent (messages: replica_protocol.ts), write them into its shared gradient buffer and reply.
 */
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../backend';
import { buildModel } from '.';
import type { ForwardContext } from '../nn/module';
import { crossEntropy } from '../nn/train';
import { isReplicaRequest, type ReplicaInit, type ReplicaReply } from '../nn/replica_protocol';
import { oneLine } from '../errors';

export async function serveReplica(init: ReplicaInit): Promise<void> {
  const { port } = init;
  const signal = (reply: ReplicaReply) => port.postMessage(reply);
  let model;
  try {
    await initBackend('cpu', init.backend);
    model = buildModel(init.spec, init.normalize, 0);
  } catch (e) {
    port.postMessage({ type: 'error', seq: 0, message: oneLine(e) } satisfies ReplicaReply);
    return;
  }
  const params = model.root.namedParams();
  const trainable = params.filter(([, p]) => p.trainable).map(([, p]) => p.variable);
  const weights = new Float32Array(init.weights);
  const grads = new Float32Array(init.grads);
  port.postMessage({ type: 'ready', keys: params.map(([k]) => k) } satisfies ReplicaReply);

  // The handler awaits its reads; the main thread sends a replica its next step only after this one's reply.
  port.on('message', async (m: unknown) => {
    if (!isReplicaRequest(m)) return;
    try {
      tf.tidy(() => {
        let offset = 0;
        for (const [, p] of params) {
          p.variable.assign(tf.tensor(weights.subarray(offset, offset + p.variable.size), p.variable.shape));
          offset += p.variable.size;
        }
      });
      const ctx: ForwardContext = { training: m.bnTrain, bnUpdates: [] };
      const { value, grads: g } = tf.tidy(() => {
        const x = tf.tensor4d(m.x, m.shape);
        const y = tf.tensor1d(m.y, 'int32');
        return tf.variableGrads(() => crossEntropy(model.forward(x, ctx), y), trainable);
      });
      // Running statistics are the main thread's business: this replica's updates are dropped.
      let loss: number;
      try {
        const [lossData, ...gradData] = await Promise.all([value.data(), ...trainable.map((v) => g[v.name].data())]);
        let offset = 0;
        trainable.forEach((v, i) => {
          grads.set(gradData[i] as Float32Array, offset);
          offset += v.size;
        });
        loss = lossData[0];
      } finally {
        tf.dispose([value, ...Object.values(g)]);
      }
      signal({ type: 'done', seq: m.seq, loss });
    } catch (e) {
      signal({ type: 'error', seq: m.seq, message: oneLine(e) });
    }
  });
}
