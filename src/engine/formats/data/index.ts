/** Data sources of a job, by format; every loader returns images at the model's input shape and classes. */
import * as path from 'node:path';
import type { ImageSet } from '../../data/dataset';
import { InputError } from '../../errors';
import type { DataSourceSpec } from '../../job_schema';
import { guessDataFormat } from '../../catalog';
import { conformSet, type DataTarget, type Shape } from './convert';
import { readIdxPair } from './idx';
import { readNpyPair } from './npy';
import { readNpz } from './npz';
import { readImageFolder } from './imagefolder';
import { readCifar10, type DataRole } from './cifar10';

export type { DataRole, DataTarget, Shape };

export function inferFormat(p: string): DataSourceSpec['format'] {
  return guessDataFormat(p, false);
}

/**
 * Load a file-backed data source (mnist-embedded is handled by the runner, which splits it). `model` gives
 * the input shape and classes the images are converted to (channels always; height/width only with the
 * source's `resize`); `role` picks the batches of a CIFAR-10 folder.
 */
export function loadDataSource(src: DataSourceSpec, field: string, model: { shape?: Shape; numClasses?: number } = {}, role: DataRole = 'train'): ImageSet {
  const fmt = src.format ?? inferFormat(src.path ?? '');
  if (!src.path) throw new InputError('missing field "path"', field);
  const target: DataTarget = { ...model, resize: src.resize ?? false };
  switch (fmt) {
    case 'idx':
      return conformSet(readIdxPair(src.path, src.labels, model.numClasses), target, src.path);
    case 'npy':
      if (!src.labels) throw new InputError('npy images need a "labels" file', field);
      return readNpyPair(src.path, src.labels, target);
    case 'npz':
      return readNpz(src.path, target);
    case 'imagefolder':
      return readImageFolder(src.path, target);
    case 'cifar10-bin':
      return readCifar10(src.path, role, target);
    default:
      throw new InputError(`data format ${fmt ?? 'of ' + path.basename(src.path)} is not supported (supported: imagefolder, npy, npz, idx, cifar10-bin, mnist-embedded)`, field);
  }
}
