/**
 * The GIC gallery: samples picked from a calibrated set travel in results.json as bytes, and the panel
 * decodes them back into pixels; the perturbation image is |g(x) - x| scaled to the bound.
 */
import { strict as assert } from 'node:assert';
import { gallerySamples } from '../../src/engine/gic/gallery';
import type { ImageSet } from '../../src/engine/data/dataset';
import { galleryImage } from '../../webview-ui/format';

function set(n: number, shape: [number, number, number], pixel: (i: number, j: number) => number, labels: number[]): ImageSet {
  const size = shape[0] * shape[1] * shape[2];
  const x = new Float32Array(n * size);
  for (let i = 0; i < n; i++) for (let j = 0; j < size; j++) x[i * size + j] = pixel(i, j);
  return { n, shape, x, y: Int32Array.from(labels), numClasses: 10 };
}

describe('GIC gallery', () => {
  const shape: [number, number, number] = [4, 5, 3];
  const labels = [3, 1, 3, 0, 1, 2, 5, 4, 6, 7];
  const raw = set(10, shape, (i, j) => ((i * 7 + j * 13) % 100) / 100, labels);
  const delta = 0.1;
  // A calibration that moves each pixel by a known amount within the bound (and clips at 1 like g does).
  const cal = set(10, shape, (i, j) => Math.min(1, raw.x[i * 60 + j] + (delta * ((j % 5) + 1)) / 5), labels);

  it('takes the first image of each class in class order, as bytes that decode to the pixels', () => {
    const samples = gallerySamples(raw, cal, delta, 6);
    assert.deepEqual(samples.map((s) => s.label), [0, 1, 2, 3, 4, 5]);
    const source = [3, 1, 5, 0, 7, 6]; // index of the first image of classes 0..5
    for (const [k, s] of samples.entries()) {
      assert.deepEqual(s.shape, shape);
      const x = Buffer.from(s.x, 'base64');
      const gx = Buffer.from(s.gx, 'base64');
      const diff = Buffer.from(s.diff, 'base64');
      assert.equal(x.length, 60);
      for (let j = 0; j < 60; j++) {
        const i = source[k];
        assert.ok(Math.abs(x[j] / 255 - raw.x[i * 60 + j]) <= 0.5 / 255 + 1e-6);
        assert.ok(Math.abs(gx[j] / 255 - cal.x[i * 60 + j]) <= 0.5 / 255 + 1e-6);
        // The perturbation keeps its own scale: delta is 255, well below one 8-bit step of x stays visible.
        const d = Math.abs(cal.x[i * 60 + j] - raw.x[i * 60 + j]) / delta;
        assert.equal(diff[j], Math.round(Math.min(1, d) * 255));
      }
    }
  });

  it('the panel decodes grey and colour images and draws the largest channel of the perturbation', () => {
    const [s] = gallerySamples(raw, cal, delta, 1);
    const img = galleryImage(s, 'x')!;
    assert.equal(img.width, 5);
    assert.equal(img.height, 4);
    const x = Buffer.from(s.x, 'base64');
    assert.deepEqual(Array.from(img.rgba.subarray(0, 8)), [x[0], x[1], x[2], 255, x[3], x[4], x[5], 255]);
    const d = galleryImage(s, 'diff')!;
    const diff = Buffer.from(s.diff, 'base64');
    assert.equal(d.rgba[0], Math.max(diff[0], diff[1], diff[2]));
    assert.equal(d.rgba[0], d.rgba[1]);

    const grey = gallerySamples(set(2, [2, 2, 1], (i, j) => j / 4, [0, 1]), set(2, [2, 2, 1], (i, j) => j / 4, [0, 1]), delta)[1];
    const g = galleryImage(grey, 'gx')!;
    assert.deepEqual(Array.from(g.rgba.subarray(4, 8)), [64, 64, 64, 255]);
  });

  it('refuses malformed samples instead of drawing garbage', () => {
    const [s] = gallerySamples(raw, cal, delta, 1);
    assert.equal(galleryImage({ ...s, x: s.x.slice(0, -8) }, 'x'), undefined, 'too few bytes');
    assert.equal(galleryImage({ ...s, x: '%%%not base64' }, 'x'), undefined, 'not base64');
    assert.equal(galleryImage({ ...s, shape: [4, 5, 2] }, 'x'), undefined, 'two channels');
    assert.equal(galleryImage({ ...s, shape: [100000, 100000, 1] }, 'x'), undefined, 'absurd size');
    assert.equal(galleryImage({ ...s, shape: [-4, -5, 3] }, 'x'), undefined, 'negative size');
    assert.throws(() => gallerySamples(raw, set(9, shape, () => 0, labels.slice(0, 9)), delta), /does not match/);
  });
});
