/**
 * What a graph of ort_grad_graph.ts is, for the code that runs it (ort_graph.ts, ort_train.ts) and the code that
 * builds one (the builder and its calibration form): the options that choose a form, what the builder needs of
 * a network, and what a built graph hands over (its bytes, its inputs and outputs by name).
 */
import type { Model } from './model';
import type { Module, Param } from './module';

/** Opset of the training graph: ScatterElements' `reduction` (overlapping max pools) needs 16. */
export const GRAD_OPSET = 17;

export class OrtGradUnsupported extends Error {}

/**
 * What a graph computes. `loss: 'ce'` (the training step): inputs `target` and `inv_batch`, outputs `loss`, the
 * mean cross-entropy, `logits` and the gradients. `loss: 'seed'` (a vector-Jacobian product): input `dlogits` [N, classes],
 * the gradient of any loss with respect to the logits (computed by the caller from the logits of a forward
 * graph), outputs `logits` and the gradients of that loss. `loss: 'none'`: the forward pass alone, output
 * `logits`, with the weights fed as inputs (they change between steps). `paramGrads`: gradients of the trainable
 * parameters (`grad/<key>`); `inputGrad`: the gradient with respect to the input pixels (`grad/x`, NHWC).
 */
export interface GradGraphOptions {
  bnTrain: boolean;
  loss?: 'ce' | 'seed' | 'none';
  paramGrads?: boolean;
  inputGrad?: boolean;
  /**
   * Per-channel scales on every BatchNorm's affine parameters, fed as inputs `gscale/<path>` and `bscale/<path>`
   * ([C] each: gamma * gscale, beta * bscale) with their gradients as outputs `grad/gscale/<path>` and
   * `grad/bscale/<path>`: ANP's masks and multiplicative noise.
   */
  bnScales?: boolean;
  /**
   * With `paramGrads`: the keys of the parameters that get gradients (NPD trains only the module it inserted);
   * default every trainable parameter.
   */
  trainable?: string[];
  /**
   * Module paths whose outputs come out as `tap/<path>` (NCHW for feature maps); in a `seed` graph each also
   * takes a gradient `dtap/<path>` of the same shape, added to what flows back from the logits (NAD's
   * attention terms).
   */
  taps?: string[];
  /**
   * NAD's attention terms in a `ce` graph with `taps`, one weight (beta) per tap in `taps`' order: the loss is
   * the cross-entropy plus, per tap, beta times the mean squared difference between the tap's attention map
   * (the sum of squares over channels per position, each image's map divided by its L2 norm + 1e-6) and the
   * teacher's, fed as `tattn/<path>` [N, H*W] (1 for a pooled feature). The whole student step is then one run.
   */
  attention?: number[];
  /**
   * SAU's unlearning loss in a `ce` graph over a paired batch (x then x', 2n images): inputs `target` [2n, k]
   * (one-hot labels on the first n rows, zeros on the x' rows), `sar_ref` [2n, k] (on an x' row the one-hot label
   * f0 gives it where that x' is poisoned, zeros elsewhere) and `inv_batch` (1/n). Loss: the clean rows'
   * cross-entropy plus lambda * sum over poisoned rows of -log(1 + 1e-6 - clip(p(ref), 0.001, 1)), both over n.
   */
  unlearning?: { lambda: number };
  /**
   * With frozen BatchNorm statistics: every BatchNorm's input batch mean and biased variance come out as
   * `imean/<path>` and `ivar/<path>` ([C]); in a `seed` graph each takes a gradient `dimean/<path>`,
   * `divar/<path>` (GIC's and model inversion's alignment with the running statistics).
   */
  inputStats?: boolean;
  /**
   * The network's output is a feature map, not logits (GIC's h): `logits` and `dlogits` then have its shape
   * (NCHW). Only the `none` and `seed` forms.
   */
  mapOutput?: boolean;
  /**
   * A `seed` graph in two sessions: the forward part (`bytes`: inputs x, the weights and scales; outputs logits,
   * taps, input statistics and the tensors the backward rules read) and the backward part (`backward.bytes`:
   * those saved tensors and the seeds in, the gradients out). A caller that needs the logits to compute its seed
   * then runs the forward pass once instead of twice (once in a forward graph, again inside the VJP).
   */
  split?: boolean;
  /**
   * The channel block of ONNX Runtime's NCHWc kernels on this CPU (backend/onnx_runtime.ts's nchwcBlockSize);
   * convolutions whose channels fit it run blocked. 0 or absent: plain Conv everywhere.
   */
  nchwcBlock?: number;
  /**
   * The weights as the model has them when the session is made, baked into it as constants instead of fed at
   * every run (OrtModelGraph.create; the builder ignores it): for a model that does not change while the graph
   * lives (SAU's and ANP's victim, NC's reversal, RNP's masks on the unlearned model, a teacher, GIC's victim).
   * ONNX Runtime then rearranges every convolution's filter into its blocked layout once, not at every run.
   */
  constantWeights?: boolean;
}

/** What the builder needs of a network: a Model, or a bare module with its input shape (GIC's h). */
export interface GraphNet {
  root: Module;
  inputShape: [number, number, number];
  /** Classes of the logits (ignored with `mapOutput`). */
  numClasses: number;
  normalize?: Model['normalize'];
  spec: { arch: string };
  /**
   * Every parameter the graph's inputs name, where they are not all the root's own (a calibration graph feeds
   * g's network under `gic/` and the victim's under their own keys); default `root.namedParams()`.
   */
  namedParams?(): Array<[string, Param]>;
}

export interface GradGraph {
  bytes: Uint8Array;
  /** Parameter inputs (namedParams keys) in the order the caller feeds them, with their shapes. */
  paramInputs: Array<{ key: string; shape: number[] }>;
  /** Gradient outputs: `grad/<key>` for each trainable parameter, in namedParams order. */
  gradKeys: string[];
  /** BatchNorm layers whose batch statistics come out as `mean/<path>` and `var/<path>` (training mode only). */
  bnPaths: string[];
  /** Positions per image each of those layers averages over (its H x W): N times it is the count behind its variance. */
  bnSpatial: Map<string, number>;
  /** With `bnScales`: the BatchNorm layers whose scales are inputs, with their channel counts, in graph order. */
  bnScales: Array<{ path: string; channels: number }>;
  /** With `taps`: each tapped module's output shape in the graph (-1 for the batch). */
  taps: Array<{ path: string; shape: number[] }>;
  /** With `inputStats`: the BatchNorm layers whose input statistics come out, with their channel counts. */
  inputStats: Array<{ path: string; channels: number }>;
  /** The shape of `logits` (-1 for the batch): [-1, classes], or the feature map's NCHW shape with `mapOutput`. */
  outputShape: number[];
  /** With `split`: the backward part, and the names of the forward part's outputs it takes as inputs. */
  backward?: { bytes: Uint8Array; saved: string[] };
}
