/**
 * The common interface of purification defenses. A defense receives the victim (never modified: it works on
 * a clone), an auxiliary set (raw or GIC-calibrated: the defense cannot tell) and a profile, and returns the
 * purified model plus facts worth reporting. Adding a defense is adding a file and a line in ./index.ts.
 */
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import type { Augment } from '../nn/train';
import type { Rng } from '../util/rng';
import type { ReversedTriggerImage } from '../../shared/results';

/**
 * `paper`: BackdoorBench's defaults. `fast`: the same algorithm on a shorter schedule; the fine-tuning based
 * defenses (ft, nad, ftsam, fst) then use batches of 32 and an initial rate of 0.1 so that a small auxiliary
 * set still gives enough update steps to move the weights (with lr 0.01 and few epochs they barely change).
 */
export type Profile = 'fast' | 'paper';

export type DefenseParams = Record<string, number | string | boolean | number[]>;

export interface DefenseContext {
  victim: Model;
  aux: ImageSet;
  profile: Profile;
  /** Effective parameters: the profile's defaults overridden by the job's `params`. */
  params: DefenseParams;
  /** Augmentation for training on the auxiliary set (flip only for natural images). */
  augment: Augment;
  rng: Rng;
  signal?: AbortSignal;
  /** Progress within this defense, 0..total. */
  progress: (done: number, total: number, message?: string) => void;
}

export interface DefenseOutcome {
  model: Model;
  /** Thresholds chosen on the auxiliary validation split, pruned channels, approximations used, etc. */
  details?: Record<string, unknown>;
  /** Backdoor detection (NC): per-class anomaly index, flagged labels and the reversed triggers. */
  detection?: { anomalyIndex: number[]; flagged: number[]; triggers?: ReversedTriggerImage[] };
}

export interface Defense {
  id: string;
  title: string;
  defaults(profile: Profile): DefenseParams;
  /** Where this profile departs from BackdoorBench's config values, and why in a few words (named in the row). */
  departures?(profile: Profile): string | undefined;
  run(ctx: DefenseContext): Promise<DefenseOutcome>;
}

/** Merge profile defaults with user overrides, refusing unknown parameter names. */
export function resolveParams(defense: Defense, profile: Profile, overrides: DefenseParams | undefined): DefenseParams {
  const base = defense.defaults(profile);
  for (const k of Object.keys(overrides ?? {})) {
    if (!(k in base)) throw new Error(`unknown parameter "${k}" for defense ${defense.id} (known: ${Object.keys(base).join(', ')})`);
  }
  return { ...base, ...(overrides ?? {}) };
}

/** Yield to the event loop so that cancellation and progress messages get through between batches. */
export function yieldToLoop(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}
