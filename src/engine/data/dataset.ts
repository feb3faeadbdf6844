/**
 * The engine's in-memory image set: plain typed arrays, no tensors, so that data handling (splits,
 * attacks, shifts) allocates nothing on the tensor backend and cannot leak.
 *
 * Pixels are float32 in [0, 1], unnormalized, NHWC (image-major, then row, column, channel).
 */
export interface ImageSet {
  /** Number of images. */
  n: number;
  /** [height, width, channels] of every image. */
  shape: [number, number, number];
  /** n * H * W * C pixels in [0, 1], NHWC. */
  x: Float32Array;
  /** n labels in [0, numClasses). */
  y: Int32Array;
  numClasses: number;
}

export function imageSize(set: Pick<ImageSet, 'shape'>): number {
  return set.shape[0] * set.shape[1] * set.shape[2];
}

/** A new set holding copies of the images at `indices`, in that order. */
export function subset(set: ImageSet, indices: ArrayLike<number>): ImageSet {
  const size = imageSize(set);
  const x = new Float32Array(indices.length * size);
  const y = new Int32Array(indices.length);
  for (let i = 0; i < indices.length; i++) {
    const j = indices[i];
    x.set(set.x.subarray(j * size, (j + 1) * size), i * size);
    y[i] = set.y[j];
  }
  return { n: indices.length, shape: [...set.shape] as [number, number, number], x, y, numClasses: set.numClasses };
}

/** A deep copy (attacks and shifts write into copies, never into their input). */
export function cloneSet(set: ImageSet): ImageSet {
  return { n: set.n, shape: [...set.shape] as [number, number, number], x: set.x.slice(), y: set.y.slice(), numClasses: set.numClasses };
}

/** Concatenate sets of the same image shape. */
export function concatSets(sets: ImageSet[]): ImageSet {
  if (sets.length === 0) throw new Error('concatSets: no sets');
  const shape = sets[0].shape;
  const size = imageSize(sets[0]);
  const n = sets.reduce((s, t) => s + t.n, 0);
  const x = new Float32Array(n * size);
  const y = new Int32Array(n);
  let o = 0;
  for (const s of sets) {
    if (s.shape.join() !== shape.join()) throw new Error('concatSets: image shapes differ');
    x.set(s.x, o * size);
    y.set(s.y, o);
    o += s.n;
  }
  return { n, shape: [...shape] as [number, number, number], x, y, numClasses: Math.max(...sets.map((s) => s.numClasses)) };
}

/** Per-class counts. */
export function classCounts(set: ImageSet): number[] {
  const c = new Array(set.numClasses).fill(0);
  for (let i = 0; i < set.n; i++) c[set.y[i]]++;
  return c;
}

/** Largest value without spreading the array into arguments (a spread of a few hundred thousand overflows the stack). */
export function maxOf(values: ArrayLike<number>): number {
  let m = -Infinity;
  for (let i = 0; i < values.length; i++) if (values[i] > m) m = values[i];
  return m;
}
