/**
 * Model files in and out, by format. The architecture travels with the file where the format allows
 * (safetensors metadata); PyTorch state_dicts are matched by name and shape (see models/detect).
 */
import * as path from 'node:path';
import type { Model } from '../nn/model';
import { writeSafetensors } from './safetensors';

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
