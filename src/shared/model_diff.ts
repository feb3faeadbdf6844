/**
 * What a defense changed in a model: the contract of `backdoor-audit diff --json` and of a results row's
 * optional `diff` field, read by the CLI, the panel and report.html. Layers are named by their state_dict
 * prefix (PyTorch names), so a diff reads the same whatever format the two models were stored in.
 * This module imports nothing.
 */

export type LayerKind = 'conv' | 'batchnorm' | 'linear' | 'other';

export interface LayerDiff {
  /** The module's path: its state_dict keys without the last segment (`layer1.0.bn1`). */
  name: string;
  kind: LayerKind;
  /** Trainable values in the layer (weight and bias). */
  params: number;
  /** Output channels: BatchNorm features, convolution filters, linear outputs. */
  channels: number;
  /** ||W' - W|| / ||W|| over the layer's weight and bias together; null when ||W|| is 0 and W' differs. */
  relChange: number | null;
  /** ||W' - W|| (L2 over weight and bias), for layers whose W is zero. */
  absChange: number;
  /**
   * Output channels that are zero in the second model and were not in the first: BatchNorm gamma zeroed
   * (CLP, ANP, RNP prune this way; CLP zeroes beta too), a convolution filter or a linear row all zero.
   */
  zeroed: number[];
  /** Input channels (weight columns) all zero in the second model and not in the first: FP's pruned features. */
  zeroedInputs?: number[];
  /** BatchNorm only: relative change of the running mean and running variance (null where the first is 0). */
  bnStats?: { mean: number | null; var: number | null };
}

/** A module present in one model only (NPD inserts its polarizer in front of a block's first convolution). */
export interface ModuleOnlyIn {
  /** The module's path (`layer4.0.conv1.inserted`). */
  name: string;
  /** Trainable values under it. */
  params: number;
  /** Its state_dict keys. */
  tensors: string[];
}

export interface ModelDiff {
  /** Every layer present in both models, in the first model's state_dict order. */
  layers: LayerDiff[];
  /** Modules of the second model the first lacks. */
  inserted: ModuleOnlyIn[];
  /** Modules of the first model the second lacks. */
  removed: ModuleOnlyIn[];
  /** ||W' - W|| / ||W|| over every trainable tensor both models have. */
  relChange: number | null;
  /** Layers whose trainable values or running statistics changed at all. */
  changedLayers: number;
  /** Sum of `zeroed` over the layers. */
  zeroedChannels: number;
}

/** The two files `backdoor-audit diff A B` compared, with the diff. */
export interface ModelFileDiff extends ModelDiff {
  a: { path: string; format: string; arch: string; params: number };
  b: { path: string; format: string; arch: string; params: number };
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const numOrNull = (v: unknown) => v === null || typeof v === 'number';
const intList = (v: unknown) => Array.isArray(v) && v.every((x) => Number.isInteger(x));

/** Structural check before the panel draws a diff from a results.json it did not write. */
export function isModelDiff(v: unknown): v is ModelDiff {
  return (
    isObj(v) &&
    Array.isArray(v.layers) &&
    v.layers.every(
      (l) =>
        isObj(l) &&
        typeof l.name === 'string' &&
        typeof l.kind === 'string' &&
        typeof l.params === 'number' &&
        numOrNull(l.relChange) &&
        intList(l.zeroed) &&
        (l.zeroedInputs === undefined || intList(l.zeroedInputs)) &&
        (l.bnStats === undefined || (isObj(l.bnStats) && numOrNull(l.bnStats.mean) && numOrNull(l.bnStats.var))),
    ) &&
    Array.isArray(v.inserted) &&
    v.inserted.every((m) => isObj(m) && typeof m.name === 'string' && typeof m.params === 'number') &&
    Array.isArray(v.removed) &&
    numOrNull(v.relChange)
  );
}
