/**
 * The user's own poisoned set for the end-to-end test (run.sh): triggered test images as a user would have
 * exported them with numpy, `triggered_x.npy` (uint8 N,28,28,1) and their true labels `triggered_y.npy` (int64),
 * written into the folder given as the only argument. The images are the first 200 digits of the embedded MNIST
 * test split a job with seed 0 uses (so the victim never trained on them), each stamped with the e2e victim's
 * trigger: BadNets' white 3x3 square in the bottom-right corner (rows and columns 25-27). Digits of the target
 * class 0 stay in the set, as they would in a user's export: the job counts ASR over the others only.
 *
 * Usage: npx tsx test/e2e/make-poisoned-set.ts <folder>
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadEmbeddedMnist, splitDisjoint } from '../../src/engine/formats/data/mnist';
import { encodeNpy } from '../../src/engine/formats/data/npy';
import { Rng } from '../../src/engine/util/rng';

const N = 200;
const TARGET = 0;

function main(): void {
  const dir = process.argv[2];
  if (!dir) throw new Error('usage: make-poisoned-set.ts <folder>');
  fs.mkdirSync(dir, { recursive: true });
  // The split prepare.ts makes of the embedded digits for a job's first seed (0): its `test` part.
  const test = splitDisjoint(loadEmbeddedMnist(), { train: 6000, pool: 2000, test: 2000 }, new Rng(0).fork('split')).test;
  const [h, w] = test.shape;
  const x = new Uint8Array(N * h * w);
  const y = new BigInt64Array(N);
  for (let i = 0; i < N; i++) {
    for (let p = 0; p < h * w; p++) x[i * h * w + p] = Math.round(test.x[i * h * w + p] * 255);
    for (let r = h - 3; r < h; r++) for (let c = w - 3; c < w; c++) x[i * h * w + r * w + c] = 255;
    y[i] = BigInt(test.y[i]);
  }
  fs.writeFileSync(path.join(dir, 'triggered_x.npy'), encodeNpy(x, [N, h, w, 1]));
  fs.writeFileSync(path.join(dir, 'triggered_y.npy'), encodeNpy(y, [N]));
  const counted = Array.from(test.y.subarray(0, N)).filter((v) => v !== TARGET).length;
  // run.sh passes this on to the browser part, which checks the job counted exactly these.
  process.stdout.write(`${counted}\n`);
}

main();
