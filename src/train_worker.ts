/**
 * worker_threads entry of data-parallel training (src/engine/nn/data_parallel.ts): one replica of the model
 * on its own single-threaded backend.
 */
import { workerData } from 'node:worker_threads';
import { serveReplica } from './engine/models/replica';
import type { ReplicaInit } from './engine/nn/replica_protocol';

serveReplica(workerData as ReplicaInit).catch((e: unknown) => {
  throw e instanceof Error ? e : new Error(String(e));
});
