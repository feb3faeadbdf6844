/** The parity fixtures of scripts/make-fixtures.py: PyTorch's inputs (NCHW) and logits per network. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { readSafetensors } from '../../src/engine/formats/safetensors';

export const FIXTURES = path.join(__dirname, '..', 'fixtures');

export interface ParityCase {
  name: string;
  files: Partial<Record<'pt' | 'safetensors' | 'onnx', string>>;
  arch?: string;
  numClasses: number;
  inputShape?: [number, number, number];
}

export function parityCases(): ParityCase[] {
  const index = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'parity.json'), 'utf8')) as Record<string, Omit<ParityCase, 'name'>>;
  return Object.entries(index).map(([name, c]) => ({ name, ...c }));
}

let tensors: ReturnType<typeof readSafetensors> | undefined;

/** The case's input as NHWC and PyTorch's output for it. */
export function parityData(name: string): { x: tf.Tensor4D; logits: Float32Array; shape: number[] } {
  tensors ??= readSafetensors(path.join(FIXTURES, 'parity.safetensors'));
  const input = tensors.get(`${name}.input`)!;
  const out = tensors.get(`${name}.logits`)!;
  const x = tf.tidy(() => tf.transpose(tf.tensor4d(input.data as Float32Array, input.shape as [number, number, number, number]), [0, 2, 3, 1])) as tf.Tensor4D;
  return { x, logits: out.data as Float32Array, shape: out.shape };
}

/** Largest |a - b| and largest |b|. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): { diff: number; scale: number } {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return { diff, scale };
}
