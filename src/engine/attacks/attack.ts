/**
 * The common shape of an attack: a trigger applied to one image in place (pixels in [0,1], HWC), plus how it
 * poisons a training set. Attacks work on plain arrays and never touch their input sets.
 */
export interface Attack {
  id: string;
  /** Clean-label attacks poison only images of the target class and keep their labels (SIG). */
  cleanLabel: boolean;
  /** Apply the trigger to one image in place (`img` is a view of H*W*C pixels); the result is clipped. */
  apply(img: Float32Array, shape: [number, number, number]): void;
}
