/** `backdoor-audit inspect`: what a model file is, without running anything from it. */
import * as path from 'node:path';
import { loadModelFile } from './model_io';
import { ptShape } from '../nn/module';
import { initBackend } from '../backend';

export interface InspectInfo {
  path: string;
  format: string;
  arch: string;
  inputShape: [number, number, number];
  /** False when the network pools globally and the file does not fix its input size (any H x W works). */
  inputSizeKnown: boolean;
  numClasses: number;
  params: number;
  normalize: { mean: number[]; std: number[] } | null;
  /** Leaf modules in forward order: ONNX nodes, Keras layers or the architecture's layers. */
  layers: Array<{ name: string; kind: string; params: number; shape?: number[] }>;
  /** Every parameter and buffer as a PyTorch state_dict would name and shape it. */
  tensors: Array<{ name: string; shape: number[]; dtype: string }>;
  /** A BackdoorBench attack record's metadata (the poisoned set is not read here). */
  backdoorBench?: { modelName: string; cleanData: string | null; layout: string; bdTestImages: number; bdTrainImages: number | null };
}

export async function inspectModelFile(file: string): Promise<InspectInfo> {
  await initBackend('cpu');
  const { model, info, inputSizeKnown, record } = loadModelFile(file, path.basename(file));
  try {
    const layers = [...model.root.modules()]
      .filter((m) => m.path && m.children.size === 0)
      .map((m) => {
        const trainable = [...m.params.values()].filter((p) => p.trainable);
        const weight = m.params.get('weight');
        return { name: m.path, kind: m.kind, params: trainable.reduce((s, p) => s + p.variable.size, 0), ...(weight ? { shape: ptShape(weight) } : {}) };
      });
    const tensors = model.root.namedParams().map(([name, p]) => ({ name, shape: ptShape(p), dtype: 'float32' }));
    const backdoorBench = record
      ? { modelName: record.modelName, cleanData: record.cleanData ?? null, layout: record.layout, bdTestImages: record.bdTestCount, bdTrainImages: record.bdTrainCount ?? null }
      : undefined;
    return { ...info, inputSizeKnown, normalize: model.normalize ?? null, ...(backdoorBench ? { backdoorBench } : {}), layers, tensors };
  } finally {
    model.dispose();
  }
}

export function formatInspect(i: InspectInfo): string {
  const lines = [
    `file:         ${i.path}`,
    `format:       ${i.format}`,
    `architecture: ${i.arch}`,
    `input shape:  ${i.inputShape.join(' x ')} (H x W x C)${i.inputSizeKnown ? '' : ' (nominal: the network pools globally, other sizes work too)'}`,
    `classes:      ${i.numClasses}`,
    `parameters:   ${i.params.toLocaleString('en-US')}`,
    ...(i.normalize ? [`normalize:    mean ${i.normalize.mean.join(', ')} / std ${i.normalize.std.join(', ')}`] : []),
    ...(i.backdoorBench
      ? [`record:       BackdoorBench attack record (${i.backdoorBench.layout} layout): model_name ${i.backdoorBench.modelName}, data ${i.backdoorBench.cleanData ?? '?'}, bd_test ${i.backdoorBench.bdTestImages} images${i.backdoorBench.bdTrainImages !== null ? `, bd_train ${i.backdoorBench.bdTrainImages}` : ''}`]
      : []),
    `layers:       ${i.layers.length}`,
    ...i.layers.map((l) => `  ${l.name.padEnd(28)} ${l.kind.padEnd(18)} ${String(l.params).padStart(9)}${l.shape ? `  [${l.shape.join(', ')}]` : ''}`),
  ];
  return lines.join('\n');
}
