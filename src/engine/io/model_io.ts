/**
 * Model files in and out, by format. The architecture travels with the file where the format allows
 * (safetensors metadata); PyTorch state_dicts are matched by name and shape (see models/detect).
 */
import * as path from 'node:path';
import type { Model } from '../nn/model';
import type { Results } from '../jobs/results';
import type { Job } from '../jobs/schema';
import { buildModel } from '../models';
import { InputError } from '../errors';
import { readSafetensors, readSafetensorsMetadata, writeSafetensors } from './safetensors';
import { readPt, writePt } from './pt';
import type { PtStateDict } from '../nn/module';

export type ModelFormat = 'pt' | 'safetensors' | 'onnx' | 'tfjs';

/** Write `model` to `file` in `format`; returns the path written. */
export function saveModelFile(model: Model, file: string, format: ModelFormat): string {
  if (format === 'pt') {
    writePt(model.stateDict(), file);
    return file;
  }
  if (format === 'safetensors') {
    writeSafetensors(model.stateDict(), file, {
      format: 'pt',
      arch: model.spec.arch,
      inputShape: JSON.stringify(model.spec.inputShape),
      numClasses: String(model.spec.numClasses),
      options: JSON.stringify(model.spec.options ?? {}),
      normalize: JSON.stringify(model.normalize ?? null),
    });
    return file;
  }
  throw new Error(`writing ${format} models is not supported yet (${path.basename(file)})`);
}

/**
 * Load a model named by a job. Safetensors files we wrote carry their architecture in the metadata; otherwise
 * the job must name `arch`, `inputShape` and `numClasses` (a state_dict has no graph).
 */
export function loadModelFile(ref: Job['model'], where: string): { model: Model; info: Results['model'] } {
  const spec = typeof ref === 'string' ? { path: ref } : ref;
  const file = spec.path;
  const ext = path.extname(file).toLowerCase();
  const isPt = ext === '.pt' || ext === '.pth';
  if (!isPt && ext !== '.safetensors') {
    throw new InputError(`reading ${ext || path.basename(file)} models is not supported yet (supported: .safetensors, .pt, .pth)`, where);
  }
  const sd: PtStateDict = isPt ? (readPt(file) as unknown as PtStateDict) : readSafetensors(file);
  const meta = isPt ? detectArchitecture(sd) : readSafetensorsMetadata(file);
  const arch = (typeof ref === 'object' && ref.arch) || meta.arch;
  const parse = <T>(s: string | undefined): T | undefined => {
    try {
      return s ? (JSON.parse(s) as T) : undefined;
    } catch {
      return undefined;
    }
  };
  const inputShape = (typeof ref === 'object' && ref.inputShape) || parse<[number, number, number]>(meta.inputShape);
  const numClasses = (typeof ref === 'object' && ref.numClasses) || (meta.numClasses ? Number(meta.numClasses) : undefined);
  if (!arch || !inputShape || !numClasses) {
    const keys = [...sd.keys()].slice(0, 5).join(', ');
    throw new InputError(`no known architecture matches this state_dict (first keys: ${keys}); name "arch", "inputShape" and "numClasses" in the job's model field, or export the model to ONNX`, where);
  }
  const normalize = (typeof ref === 'object' && ref.normalize) || parse<{ mean: number[]; std: number[] }>(meta.normalize) || undefined;
  const model = buildModel({ arch, inputShape, numClasses, options: parse<Record<string, unknown>>(meta.options) }, normalize ?? undefined);
  try {
    model.loadStateDict(sd, file);
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, info: { path: file, format: isPt ? 'pt' : 'safetensors', arch, params: model.paramCount(), inputShape, numClasses } };
}

/**
 * Architecture from state_dict names and shapes (a state_dict has no graph). Recognizes BackdoorBench's
 * PreAct-ResNet18 at any width, input channels and classes; the input size is not recorded in a state_dict,
 * so 32x32 is assumed unless the job says otherwise. Other stacks must be named in the job.
 */
export function detectArchitecture(sd: PtStateDict): Record<string, string> {
  const conv1 = sd.get('conv1.weight');
  const linear = sd.get('linear.weight');
  if (conv1 && linear && sd.has('layer4.1.conv2.weight') && sd.has('layer1.0.bn1.weight') && conv1.shape.length === 4) {
    const width = conv1.shape[0];
    return { arch: 'preact-resnet18', inputShape: JSON.stringify([32, 32, conv1.shape[1]]), numClasses: String(linear.shape[0]), options: JSON.stringify({ width }) };
  }
  return {};
}
