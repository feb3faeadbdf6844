/** `backdoor-audit inspect`: what a model file is, without running anything from it. */
import * as path from 'node:path';
import { loadModelFile } from './model_io';
import { readSafetensors } from './safetensors';

export interface InspectInfo {
  path: string;
  format: string;
  arch: string;
  inputShape: [number, number, number];
  numClasses: number;
  params: number;
  layers: Array<{ name: string; kind: string; params: number }>;
  tensors: Array<{ name: string; shape: number[]; dtype: string }>;
}

export async function inspectModelFile(file: string): Promise<InspectInfo> {
  const { initBackend } = await import('../backend');
  await initBackend('cpu');
  const { model, info } = loadModelFile(file, path.basename(file));
  try {
    const layers = [...model.root.modules()]
      .filter((m) => m.path && m.children.size === 0)
      .map((m) => ({ name: m.path, kind: m.kind, params: [...m.params.values()].filter((p) => p.trainable).reduce((s, p) => s + p.variable.size, 0) }));
    const tensors = [...readSafetensors(file)].map(([name, t]) => ({ name, shape: t.shape, dtype: t.dtype }));
    return { ...info, layers, tensors };
  } finally {
    model.dispose();
  }
}

export function formatInspect(i: InspectInfo): string {
  const lines = [
    `file:         ${i.path}`,
    `format:       ${i.format}`,
    `architecture: ${i.arch}`,
    `input shape:  ${i.inputShape.join(' x ')} (H x W x C)`,
    `classes:      ${i.numClasses}`,
    `parameters:   ${i.params.toLocaleString('en-US')}`,
    'layers:',
    ...i.layers.map((l) => `  ${l.name.padEnd(28)} ${l.kind.padEnd(14)} ${l.params}`),
  ];
  return lines.join('\n');
}
