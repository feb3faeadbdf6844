/**
 * A victim folder of the zoo as scripts/zoo/train_victims.py writes it, read for the engine: the model as given
 * (`victim.pt`, else `victim.onnx`) with its normalization, the auxiliary sample, the clean test set and the
 * triggered test set (PyTorch's attack, true labels; every image attacked toward the victim's target). Shared by
 * run-defenses.ts and replay-stream.ts so that both run on exactly the same images.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadModelFile } from '../../src/engine/model_files/model_io';
import { readNpyPair } from '../../src/engine/formats/data/npy';

export interface VictimInfo {
  name: string;
  arch: string;
  normalize: { mean: number[]; std: number[] };
  inputShape: [number, number, number];
  numClasses: number;
  target: number;
  metrics: { acc: number; asr: number; ra: number };
}

export function readZooVictim(zoo: string, name: string) {
  const dir = path.join(zoo, name);
  const info = JSON.parse(fs.readFileSync(path.join(dir, 'victim.json'), 'utf8')) as VictimInfo;
  const file = fs.existsSync(path.join(dir, 'victim.pt')) ? path.join(dir, 'victim.pt') : path.join(dir, 'victim.onnx');
  const ref = file.endsWith('.onnx')
    ? { path: file, normalize: info.normalize }
    : { path: file, inputShape: info.inputShape, numClasses: info.numClasses, normalize: info.normalize };
  const loaded = loadModelFile(ref, name);
  const target = { shape: info.inputShape, numClasses: info.numClasses };
  const aux = readNpyPair(path.join(dir, 'aux_x.npy'), path.join(dir, 'aux_y.npy'), target);
  const test = readNpyPair(path.join(dir, 'test_x.npy'), path.join(dir, 'test_y.npy'), target);
  const bd = readNpyPair(path.join(dir, 'bd_x.npy'), path.join(dir, 'bd_y.npy'), target);
  return { info, loaded, aux, test, triggered: { set: bd, attackLabels: new Int32Array(bd.n).fill(info.target) } };
}
