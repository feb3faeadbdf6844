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

export type ModelFormat = 'pt' | 'safetensors' | 'onnx' | 'tfjs';

/** Write `model` to `file` in `format`; returns the path written. */
export function saveModelFile(model: Model, file: string, format: ModelFormat): string {
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
  if (ext !== '.safetensors') {
    throw new InputError(`reading ${ext || path.basename(file)} models is not supported yet (supported: .safetensors)`, where);
  }
  const meta = readSafetensorsMetadata(file);
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
    throw new InputError('the file does not say its architecture: give "arch", "inputShape" and "numClasses" in the job\'s model field', where);
  }
  const normalize = (typeof ref === 'object' && ref.normalize) || parse<{ mean: number[]; std: number[] }>(meta.normalize) || undefined;
  const model = buildModel({ arch, inputShape, numClasses, options: parse<Record<string, unknown>>(meta.options) }, normalize ?? undefined);
  try {
    model.loadStateDict(readSafetensors(file), file);
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, info: { path: file, format: 'safetensors', arch, params: model.paramCount(), inputShape, numClasses } };
}
