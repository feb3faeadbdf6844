/**
 * The replica channel of data-parallel training between the training thread (data_parallel.ts) and each
 * replica (replica.ts): what a replica starts with (shared weight and gradient buffers), the step it is asked
 * for and its replies, each with a check made on arrival. Engine-internal: its payloads are architecture specs
 * and raw tensors that only the two sides of this channel read.
 */
import type { MessagePort } from 'node:worker_threads';
import type { BackendName } from '../backend';
import type { ArchSpec, Normalization } from './model';

export interface ReplicaInit {
  backend: BackendName;
  spec: ArchSpec;
  normalize?: Normalization;
  /** All parameters and buffers, flat, in namedParams order (shared with the main thread). */
  weights: SharedArrayBuffer;
  /** This replica's gradients of the trainable parameters, flat, in namedParams order. */
  grads: SharedArrayBuffer;
  port: MessagePort;
}

export type ReplicaRequest = {
  type: 'step';
  seq: number;
  x: Float32Array;
  shape: [number, number, number, number];
  y: Int32Array;
  bnTrain: boolean;
};

export type ReplicaReply = { type: 'ready'; keys: string[] } | { type: 'done'; seq: number; loss: number } | { type: 'error'; seq: number; message: string };

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null;
}

export function isReplicaRequest(v: unknown): v is ReplicaRequest {
  return isObj(v) && v.type === 'step' && typeof v.seq === 'number' && v.x instanceof Float32Array && v.y instanceof Int32Array && Array.isArray(v.shape) && v.shape.length === 4 && typeof v.bnTrain === 'boolean';
}

export function isReplicaReply(v: unknown): v is ReplicaReply {
  if (!isObj(v)) return false;
  switch (v.type) {
    case 'ready':
      return Array.isArray(v.keys);
    case 'done':
      return typeof v.seq === 'number' && typeof v.loss === 'number';
    case 'error':
      return typeof v.seq === 'number' && typeof v.message === 'string';
    default:
      return false;
  }
}
