/**
 * DOM pieces the results panel (render.ts) and the Calibration side view (calibration_view.ts) share: one
 * element builder, and the gallery's image cell, so that both views draw and label a GIC sample alike.
 */
import type { GicSample } from '../src/shared/results';
import { galleryImage } from './format';

export function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/**
 * A table cell with one image of a GIC sample (`x`, its calibration `gx` or their scaled difference) drawn on a
 * canvas with an accessible name, or a dash when the sample lacks that image.
 */
export function galleryCell(sample: GicSample, which: 'x' | 'gx' | 'diff', title: string, aux: string): HTMLTableCellElement {
  const td = el('td');
  const img = galleryImage(sample, which);
  if (img) {
    const canvas = el('canvas', 'gallery-image');
    canvas.width = img.width;
    canvas.height = img.height;
    canvas.setAttribute('role', 'img');
    canvas.setAttribute('aria-label', `${title} of a class ${sample.label} image of aux set ${aux}`);
    canvas.getContext('2d')?.putImageData(new ImageData(img.rgba, img.width, img.height), 0, 0);
    td.append(canvas);
  } else td.append(el('span', 'muted', '—'));
  return td;
}
