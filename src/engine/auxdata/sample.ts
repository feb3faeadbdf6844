/**
 * Class-balanced, seeded sampling of an auxiliary set from a pool: `perClass` images of every class, or a
 * total `size` spread evenly over the classes (the remainder to the first classes).
 */
import type { ImageSet } from '../data/dataset';
import { subset } from '../data/dataset';
import type { Rng } from '../util/rng';
import { InputError } from '../errors';

export function sampleBalanced(pool: ImageSet, want: { size?: number; perClass?: number }, rng: Rng, where?: string): ImageSet {
  const k = pool.numClasses;
  const byClass: number[][] = Array.from({ length: k }, () => []);
  for (let i = 0; i < pool.n; i++) byClass[pool.y[i]].push(i);
  const quota = (c: number) => (want.perClass !== undefined ? want.perClass : Math.floor((want.size ?? pool.n) / k) + (c < (want.size ?? pool.n) % k ? 1 : 0));
  const chosen: number[] = [];
  for (let c = 0; c < k; c++) {
    const q = quota(c);
    if (q > byClass[c].length) throw new InputError(`class ${c} has ${byClass[c].length} images, fewer than the ${q} asked for`, where);
    rng.shuffle(byClass[c]);
    chosen.push(...byClass[c].slice(0, q));
  }
  return subset(pool, rng.shuffle(chosen) as number[]);
}
