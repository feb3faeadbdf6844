/** Data sources of a job, by format. */
import * as path from 'node:path';
import type { ImageSet } from '../../data/dataset';
import { InputError } from '../../errors';
import type { DataSourceSpec } from '../../jobs/schema';
import { readIdxPair } from './idx';
import { readNpyPair } from './npy';

export function inferFormat(p: string): DataSourceSpec['format'] {
  if (/-idx3-ubyte(\.gz)?$/.test(p)) return 'idx';
  if (p.endsWith('.npy')) return 'npy';
  if (p.endsWith('.npz')) return 'npz';
  return undefined;
}

/** Load a file-backed data source (mnist-embedded is handled by the runner, which splits it). */
export function loadDataSource(src: DataSourceSpec, field: string, numClasses?: number): ImageSet {
  const fmt = src.format ?? inferFormat(src.path ?? '');
  if (!src.path) throw new InputError('missing field "path"', field);
  switch (fmt) {
    case 'idx':
      return readIdxPair(src.path, src.labels, numClasses);
    case 'npy':
      if (!src.labels) throw new InputError('npy images need a "labels" file', field);
      return readNpyPair(src.path, src.labels, numClasses);
    default:
      throw new InputError(`data format ${fmt ?? 'of ' + path.basename(src.path)} is not supported yet (supported: idx, npy, mnist-embedded)`, field);
  }
}
