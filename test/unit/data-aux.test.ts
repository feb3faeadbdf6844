import { strict as assert } from 'node:assert';
import { applyShift, SHIFTS } from '../../src/engine/auxdata/shifts';
import { sampleBalanced } from '../../src/engine/auxdata/sample';
import { classCounts, type ImageSet } from '../../src/engine/data/dataset';
import { Rng } from '../../src/engine/util/rng';
import { InputError } from '../../src/engine/errors';

/** n images of HxWxC with a smooth pattern in [0.2, 0.8] (no clipping by mild shifts), labels i mod k. */
function pattern(n: number, [h, w, c]: [number, number, number], k = 2): ImageSet {
  const x = new Float32Array(n * h * w * c);
  for (let i = 0; i < n; i++)
    for (let y = 0; y < h; y++)
      for (let xx = 0; xx < w; xx++) for (let ch = 0; ch < c; ch++) x[((i * h + y) * w + xx) * c + ch] = 0.5 + 0.3 * Math.sin(i + y * 0.7 + xx * 0.3 + ch);
  return { n, shape: [h, w, c], x, y: Int32Array.from({ length: n }, (_, i) => i % k), numClasses: k };
}

const size = (s: ImageSet) => s.shape[0] * s.shape[1] * s.shape[2];
const img = (s: ImageSet, i: number) => s.x.subarray(i * size(s), (i + 1) * size(s));
const mean = (a: ArrayLike<number>) => Array.from(a).reduce((t, v) => t + v, 0) / a.length;

describe('auxiliary set shifts', () => {
  it('every shift: seeded, leaves its input alone, keeps labels, stays in [0,1] and changes the images', () => {
    const src = pattern(6, [8, 8, 3]);
    const copy = src.x.slice();
    for (const s of SHIFTS) {
      const a = applyShift(src, s, new Rng(3));
      const b = applyShift(src, s, new Rng(3));
      const c = applyShift(src, s, new Rng(4));
      assert.deepEqual(src.x, copy, `${s} changed its input`);
      assert.deepEqual(a.x, b.x, `${s} is not deterministic for a seed`);
      assert.deepEqual(Array.from(a.y), Array.from(src.y));
      assert.ok(a.x.every((v) => v >= 0 && v <= 1), `${s} left [0,1]`);
      const moved = mean(a.x.map((v, i) => Math.abs(v - src.x[i])));
      assert.ok(moved > 0.005, `${s} barely changes the images (${moved})`);
      // contrast is not random; every other shift draws from the seed.
      if (s !== 'contrast') assert.notDeepEqual(a.x, c.x, `${s} ignores the seed`);
    }
    assert.throws(() => applyShift(src, 'fog', new Rng(0)), (e: unknown) => e instanceof InputError && /unknown shift "fog"/.test(e.message));
  });

  it('brightness: one factor in [0.5, 1.5] per image', () => {
    const src = pattern(20, [4, 4, 1]);
    const out = applyShift(src, 'brightness', new Rng(1));
    const factors: number[] = [];
    for (let i = 0; i < src.n; i++) {
      const a = img(src, i);
      const b = img(out, i);
      // The darkest pixel is never clipped (0.8 * 1.5 can be, 0.2 * 1.5 cannot).
      let lo = 0;
      for (let p = 1; p < a.length; p++) if (a[p] < a[lo]) lo = p;
      const f = b[lo] / a[lo];
      factors.push(f);
      for (let p = 0; p < a.length; p++) if (b[p] < 1) assert.ok(Math.abs(b[p] - a[p] * f) < 1e-5);
    }
    assert.ok(factors.every((f) => f >= 0.5 && f <= 1.5));
    assert.ok(Math.max(...factors) - Math.min(...factors) > 0.3, 'factors vary between images');
  });

  it('contrast: deviations from the image mean halved, mean kept', () => {
    const src = pattern(3, [4, 4, 3]);
    const out = applyShift(src, 'contrast', new Rng(0));
    for (let i = 0; i < src.n; i++) {
      const a = img(src, i);
      const b = img(out, i);
      const m = mean(a);
      assert.ok(Math.abs(mean(b) - m) < 1e-6);
      for (let p = 0; p < a.length; p++) assert.ok(Math.abs(b[p] - m - 0.5 * (a[p] - m)) < 1e-6);
    }
  });

  it('noise: additive N(0, 0.1)', () => {
    const src: ImageSet = { n: 4, shape: [32, 32, 3], x: new Float32Array(4 * 32 * 32 * 3).fill(0.5), y: new Int32Array(4), numClasses: 1 };
    const out = applyShift(src, 'noise', new Rng(2));
    const d = out.x.map((v, i) => v - src.x[i]);
    const m = mean(d);
    const sd = Math.sqrt(mean(d.map((v) => (v - m) ** 2)));
    assert.ok(Math.abs(m) < 0.005, `mean ${m}`);
    assert.ok(Math.abs(sd - 0.1) < 0.005, `sd ${sd}`);
  });

  it('blur: a normalized symmetric 3x3 Gaussian (flat images unchanged, an impulse spreads)', () => {
    const flat: ImageSet = { n: 1, shape: [5, 5, 1], x: new Float32Array(25).fill(0.4), y: new Int32Array(1), numClasses: 1 };
    assert.ok(applyShift(flat, 'blur', new Rng(0)).x.every((v) => Math.abs(v - 0.4) < 1e-6));
    const x = new Float32Array(25);
    x[12] = 1;
    const out = applyShift({ ...flat, x }, 'blur', new Rng(5)).x;
    assert.ok(Math.abs(mean(out) * 25 - 1) < 1e-5, 'mass kept');
    assert.ok(out[12] < 1 && out[12] > 0);
    assert.ok(Math.abs(out[11] - out[13]) < 1e-7 && Math.abs(out[7] - out[17]) < 1e-7 && Math.abs(out[11] - out[7]) < 1e-7, 'symmetric');
    assert.equal(out[0], 0, '3x3 support only');
    // sigma in [0.1, 2]: the neighbour weight is at most exp(-1/8) of the centre's, per axis.
    assert.ok(out[11] / out[12] <= Math.exp(-1 / 8) + 1e-6);
  });

  it('rotation: up to 30 degrees about the centre, zero fill', () => {
    // A horizontal bar through the centre of a 21x21 image.
    const x = new Float32Array(21 * 21);
    for (let c = 2; c < 19; c++) x[10 * 21 + c] = 1;
    const set: ImageSet = { n: 8, shape: [21, 21, 1], x: new Float32Array(8 * 441), y: new Int32Array(8), numClasses: 1 };
    for (let i = 0; i < 8; i++) set.x.set(x, i * 441);
    const out = applyShift(set, 'rotation', new Rng(9));
    let tilted = 0;
    for (let i = 0; i < 8; i++) {
      const o = img(out, i);
      assert.ok(Math.abs(o[10 * 21 + 10] - 1) < 1e-6, 'the centre stays');
      // Angle from the bar's end: the mass-weighted slope of the pixels right of the centre.
      let sy = 0;
      let sx = 0;
      for (let r = 0; r < 21; r++) for (let c = 11; c < 21; c++) (sy += o[r * 21 + c] * (r - 10)), (sx += o[r * 21 + c] * (c - 10));
      const deg = (Math.atan2(-sy, sx) * 180) / Math.PI;
      assert.ok(Math.abs(deg) <= 30.5, `angle ${deg}`);
      if (Math.abs(deg) > 3) tilted++;
      assert.ok(Math.abs(mean(o) - mean(x)) < 0.01, 'no mass created or lost inside the frame');
    }
    assert.ok(tilted >= 5, 'most images are visibly rotated');
  });

  it('jitter: brightness, contrast and saturation; grey images stay grey', () => {
    const grey = pattern(4, [6, 6, 1]);
    const rgbGrey: ImageSet = { ...grey, shape: [6, 6, 3], x: Float32Array.from({ length: grey.x.length * 3 }, (_, i) => grey.x[Math.floor(i / 3)]) };
    const out = applyShift(rgbGrey, 'jitter', new Rng(1));
    for (let p = 0; p < out.x.length; p += 3) assert.ok(Math.abs(out.x[p] - out.x[p + 1]) < 1e-6 && Math.abs(out.x[p] - out.x[p + 2]) < 1e-6);
    // A colourful image changes saturation: the channel spread of a pixel changes by more than brightness alone explains.
    const col = pattern(4, [6, 6, 3]);
    const j = applyShift(col, 'jitter', new Rng(1));
    let changed = 0;
    for (let i = 0; i < col.n; i++) {
      const a = img(col, i);
      const b = img(j, i);
      const ratioR = (b[0] - b[1]) / (a[0] - a[1]);
      const ratioB = (b[0] - b[2]) / (a[0] - a[2]);
      if (Math.abs(ratioR - 1) > 0.05 || Math.abs(ratioB - 1) > 0.05) changed++;
    }
    assert.ok(changed >= 3);
  });
});

describe('class-balanced sampling', () => {
  const pool = (): ImageSet => {
    // 3 classes with 10, 6 and 8 images; pixel = index so that picks are traceable.
    const y = Int32Array.from([...Array(10).fill(0), ...Array(6).fill(1), ...Array(8).fill(2)]);
    return { n: 24, shape: [1, 1, 1], x: Float32Array.from({ length: 24 }, (_, i) => i), y, numClasses: 3 };
  };

  it('draws perClass or an even split of size (remainder to the first classes), seeded, without repeats', () => {
    const p = pool();
    const a = sampleBalanced(p, { perClass: 5 }, new Rng(1));
    assert.deepEqual(classCounts(a), [5, 5, 5]);
    assert.deepEqual(Array.from(sampleBalanced(p, { perClass: 5 }, new Rng(1)).x), Array.from(a.x));
    assert.notDeepEqual(Array.from(sampleBalanced(p, { perClass: 5 }, new Rng(2)).x), Array.from(a.x));
    assert.equal(new Set(a.x).size, 15);
    for (let i = 0; i < a.n; i++) assert.equal(p.y[a.x[i]], a.y[i], 'labels travel with their images');
    assert.deepEqual(classCounts(sampleBalanced(p, { size: 14 }, new Rng(1))), [5, 5, 4]);
  });

  it('refuses more than a class holds, naming the class', () => {
    assert.throws(() => sampleBalanced(pool(), { perClass: 7 }, new Rng(0), 'aux[0]'), (e: unknown) => e instanceof InputError && e.message === 'class 1 has 6 images, fewer than the 7 asked for' && e.where === 'aux[0]');
  });
});
