/**
 * The audit of a model whose trigger nobody knows (`attack: unknown`, the common case): Neural Cleanse's
 * detection runs once on clean data before the cells, whatever the defenses are. Its verdict (anomaly index per
 * class, flagged classes) goes into `results.detection.nc`; every class's reversed trigger (mask times pattern) is
 * carried as bytes for the panel and report, and each flagged class's is also written as a PNG next to the
 * results, so the user can see where the suspected trigger sits.
 */
import * as path from 'node:path';
import { PNG } from 'pngjs';
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import { Rng } from '../util/rng';
import { ortTrainWanted } from '../nn/ort_train';
import { detectTriggers, nc, triggerImage, triggersToShow } from '../defenses/nc';
import { resolveParams, type Profile } from '../defenses/defense';
import { writeFileAtomic } from '../util/atomic';
import type { NcDetection, ReversedTriggerImage } from '../../shared/results';

export interface DetectOptions {
  profile: Profile;
  seed: number;
  signal?: AbortSignal;
  progress: (done: number, total: number, message?: string) => void;
  /** Folder the PNGs are written to (the job's staging folder), and whether a name is taken in the out dir. */
  dir: string;
  taken: (name: string) => boolean;
}

/** Reverse a trigger per class on `data`; flagged classes get their reversed trigger as a PNG. */
export async function detectUnknownTrigger(victim: Model, data: ImageSet, o: DetectOptions): Promise<NcDetection> {
  const params = resolveParams(nc, o.profile, undefined);
  const rng = new Rng(o.seed).fork('detect:nc');
  const { triggers, flagged, detection } = await detectTriggers({ victim, aux: data, profile: o.profile, params, augment: { cropPadding: 0, flip: false }, rng, signal: o.signal, progress: o.progress, ortTraining: ortTrainWanted() });
  const [h, w, c] = data.shape;
  const images: ReversedTriggerImage[] = [];
  // Every class's reversed trigger goes to the panel; the flagged ones are also written as PNGs.
  for (const t of triggersToShow(triggers, flagged)) {
    const img = triggerImage(t, data.shape);
    if (flagged.includes(t.label)) {
      let name = `nc-trigger-${t.label}.png`;
      if (o.taken(name)) name = `nc-trigger-${t.label}-${Date.now()}.png`;
      writeFileAtomic(path.join(o.dir, name), encodePng(new Uint8Array(Buffer.from(img.image, 'base64')), h, w, c));
      img.file = name;
    }
    images.push(img);
  }
  return { ...detection, triggers: images };
}

/** An RGB PNG of 8-bit HWC pixels (grey images replicated). */
export function encodePng(pixels: Uint8Array, h: number, w: number, c: number): Buffer {
  const png = new PNG({ width: w, height: h });
  for (let p = 0; p < h * w; p++) {
    for (let k = 0; k < 3; k++) png.data[p * 4 + k] = pixels[p * c + (c === 1 ? 0 : k)];
    png.data[p * 4 + 3] = 255;
  }
  return PNG.sync.write(png);
}
