/**
 * The `results.json` contract (schema `backdoor-audit/results@1`, SPEC section 9). Fractions are in [0, 1].
 * These types are shared by the runner, the CLI, the extension host and the webview; this module imports nothing.
 */
/** The tensor backends a job can run on (the backend module picks one; results.json names it). */
import type { ModelDiff } from './model_diff';

export type BackendName = 'tensorflow-gpu' | 'webgpu' | 'tensorflow' | 'wasm' | 'cpu';

export const RESULTS_SCHEMA = 'backdoor-audit/results@1';

/** What an evaluation measures (evaluate.ts). */
export interface Metrics {
  acc: number;
  asr: number;
  ra: number;
}

/**
 * What results report: ASR and RA are null where they cannot be measured (no trigger known, `attack: unknown`;
 * RA of a poisoned set given without true labels). Shown as "n/a", never as 0.
 */
export interface ReportedMetrics {
  acc: number;
  asr: number | null;
  ra: number | null;
}

export interface ResultRow extends Partial<ReportedMetrics> {
  aux: string;
  auxType: string;
  gic: boolean;
  defense: string;
  /**
   * The repetition seed of this run (the job's `seed`, or one of its `seeds`). The GIC-off and GIC-on rows of
   * one (aux, defense, seed) drew the same auxiliary sample, validation split and random stream. The runner
   * always writes it; results written before repetitions existed lack it (one run each).
   */
  seed?: number;
  der?: number | null;
  seconds: number;
  /** Path of the purified model relative to the results directory. */
  output?: string | null;
  error: string | null;
  /** Defense-specific facts worth reporting: thresholds chosen on aux validation, pruned channels, etc. */
  details?: Record<string, unknown>;
  /** The defense's effective parameters: its profile's defaults with the job's overrides. */
  params?: Record<string, number | string | boolean | number[]>;
  /** Where those parameters depart from BackdoorBench's config values, and why (absent: they do not). */
  departures?: string;
  /**
   * What the defense changed in the victim, layer by layer (`backdoor-audit diff` of the victim and this row's
   * purified model). Absent in results of older versions and in failed rows.
   */
  diff?: ModelDiff;
  /**
   * Where the defense's training steps ran: `onnxruntime` (every step), `backend` (every step on the tensor
   * backend named in results' `backend`), `mixed`; with the step counts and why steps stayed on the backend
   * (losses the ONNX training graph does not express yet, ONNX Runtime not loadable here). Absent for
   * defenses that take no optimizer step through the shared epoch loop and in older results.
   */
  training?: RowTraining;
}

export interface RowTraining {
  engine: 'onnxruntime' | 'backend' | 'mixed';
  onnxruntimeSteps: number;
  backendSteps: number;
  why?: string[];
}

export interface GicEntry {
  aux: string;
  /** The repetition seed whose auxiliary sample this calibrates (each seed draws its own sample). */
  seed?: number;
  delta: number;
  norm: 'inf' | '2';
  maxPerturbation: number;
  meanPerturbation: number;
  confidenceBefore: number;
  confidenceAfter: number;
  bnDistanceBefore: number | null;
  bnDistanceAfter: number | null;
  seconds: number;
  note?: string;
  /**
   * The objective terms that ran and their weights: `ce` (cross-entropy of the frozen victim on the true
   * label, weight 1) and `bn` (distance of the BatchNorm input statistics to the running ones, weight
   * lambdaBn over that many BN layers; absent when the victim has none or lambdaBn is 0).
   */
  objective?: { ce: number; bn?: { weight: number; layers: number } };
  /**
   * Where the network passes of the calibration (g's h and the victim) ran: `onnxruntime` or `backend`.
   * Absent in older results.
   */
  engine?: 'onnxruntime' | 'backend';
  /** Saved with the outputs, relative to the results directory: g (safetensors) and the calibrated set (npz). */
  files?: { net: string; images: string };
  /** A few calibrated examples for the panel's gallery (one per class). */
  samples?: GicSample[];
}

/**
 * One x / g(x) pair: [H, W, C] bytes, base64. `diff` is |g(x) - x| / delta, so 255 means the bound is reached.
 */
export interface GicSample {
  label: number;
  shape: [number, number, number];
  x: string;
  gx: string;
  diff: string;
}

export interface EmbeddingPoint {
  x: number;
  y: number;
  label: number;
  set: 'reference' | 'aux' | 'calibrated';
}

export interface EmbeddingEntry {
  aux: string;
  method: string;
  points: EmbeddingPoint[];
}

/** Neural Cleanse's verdict: anomaly index per class, the flagged classes and the reversed trigger (mask times
 * pattern) of every class as raw bytes for the panel (at most 100: then the flagged and smallest masks); a
 * flagged class's is also a PNG saved with the outputs. */
export interface NcDetection {
  anomalyIndex: number[];
  flagged: number[];
  triggers?: ReversedTriggerImage[];
  /** The clean data the triggers were reversed on, when detection ran on its own (`attack: unknown`). */
  source?: string;
}

export interface ReversedTriggerImage {
  label: number;
  /** PNG file relative to the results directory (flagged classes). */
  file?: string;
  /** [H, W, C] bytes of mask * pattern, base64 (as GicSample). */
  shape: [number, number, number];
  image: string;
  /** [H, W] bytes of the mask, base64. */
  mask: string;
  /** L1 norm of the mask (pixels). */
  maskL1: number;
}

export interface AttackInfo {
  type: string;
  target: number;
  /** Triggered images the ASR is measured on (0 when no trigger is known). */
  images: number;
  trueLabels: boolean;
  note?: string;
}

export interface Results {
  schema: typeof RESULTS_SCHEMA;
  /**
   * What ran where: `name` trained (defenses, GIC), on `threads` threads; `evaluation` computed ACC/ASR/RA
   * (ONNX Runtime's CPU kernels on the CPU backends where it loads; `onnxruntime-webgpu`: its WebGPU provider,
   * taken with `device: gpu`, which then runs the defenses' and GIC's steps too; else the training backend); `device` is
   * what the job asked for (`auto` may have fallen back to the CPU: `name` says where it went); `adapter` names
   * the GPU WebGPU ran on.
   */
  backend: { name: BackendName; threads: number; evaluation?: 'onnxruntime-cpu' | 'onnxruntime-webgpu' | BackendName; device?: 'auto' | 'gpu' | 'cpu'; adapter?: string };
  model: {
    path: string;
    format: string;
    arch: string;
    params: number;
    inputShape: [number, number, number];
    numClasses: number;
  };
  baseline: ReportedMetrics;
  rows: ResultRow[];
  gic: GicEntry[];
  embeddings: EmbeddingEntry[];
  detection: { nc?: NcDetection };
  /**
   * What the triggered set was (absent in results of older versions): the attack type and target, how many
   * triggered images ASR counts, whether their true labels were known, and a sentence saying what that means.
   */
  attack?: AttackInfo;
  /** Per (aux, defense, GIC) over the seeds: the successful runs' count, mean and sample std (null for n < 2). */
  summary?: SummaryEntry[];
  /**
   * Per (aux, defense), the paired difference GIC on minus GIC off over the seeds where both runs succeeded:
   * its mean and 95% Student-t interval (null bounds for n < 2).
   */
  gicEffect?: GicEffectEntry[];
  /**
   * Present only in the results of one shard of a sharded sweep (`run --shard i/n`): which slice this is, how many
   * cells the whole job has and its aux set order, so that `merge` can rebuild the unsharded results exactly.
   * Row k of shard `index` is cell `index + k * count`.
   */
  shard?: { index: number; count: number; cells: number; aux: string[] };
}

/** Mean and sample standard deviation of a metric over repeated runs; null where the metric has no value. */
export interface Spread {
  mean: number;
  std: number | null;
}

export interface SummaryEntry {
  aux: string;
  defense: string;
  gic: boolean;
  /** Runs that succeeded (rows without error). */
  n: number;
  acc: Spread | null;
  asr: Spread | null;
  der: Spread | null;
}

/** A mean with its two-sided 95% t-interval. */
export interface Interval {
  mean: number;
  lo: number | null;
  hi: number | null;
}

export interface GicEffectEntry {
  aux: string;
  defense: string;
  /** Seeds where both the GIC-off and the GIC-on run succeeded. */
  n: number;
  acc: Interval | null;
  asr: Interval | null;
  der: Interval | null;
}
