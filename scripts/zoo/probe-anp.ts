/** Probe: ANP's mask training on a zoo victim, then for each threshold the aux-val accuracy, test ACC and ASR. */
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/engine/backend';
import { loadModelFile } from '../../src/engine/model_files/model_io';
import { readNpyPair } from '../../src/engine/formats/data/npy';
import { SGD } from '../../src/engine/nn/optim';
import { crossEntropy, makeBatch } from '../../src/engine/nn/train';
import { accuracyOn, splitAux } from '../../src/engine/defenses/common';
import { clipVariables, createBnMasks, maskHook, pruneByThreshold, readMasks, resetNoise } from '../../src/engine/defenses/bn_masks';
import { Rng } from '../../src/engine/util/rng';
import type { ImageSet } from '../../src/engine/data/dataset';

function head(s: ImageSet, n: number): ImageSet {
  const size = s.shape[0] * s.shape[1] * s.shape[2];
  return { ...s, n: Math.min(n, s.n), x: s.x.subarray(0, Math.min(n, s.n) * size), y: s.y.subarray(0, Math.min(n, s.n)) } as ImageSet;
}

async function main() {
  const [victimName, iters = '500', lr = '0.2', eps = '0.4', bs = '64', alpha = '0.2'] = process.argv.slice(2);
  await initBackend('auto');
  const dir = path.join('zoo', victimName);
  const info = require(path.resolve(dir, 'victim.json'));
  const { model: victim } = loadModelFile({ path: path.join(dir, 'victim.pt'), inputShape: info.inputShape, numClasses: info.numClasses, normalize: info.normalize }, victimName);
  const target = { shape: info.inputShape, numClasses: info.numClasses };
  const aux = readNpyPair(path.join(dir, 'aux_x.npy'), path.join(dir, 'aux_y.npy'), target);
  const test = head(readNpyPair(path.join(dir, 'test_x.npy'), path.join(dir, 'test_y.npy'), target), 2000);
  const bd = head(readNpyPair(path.join(dir, 'bd_x.npy'), path.join(dir, 'bd_y.npy'), target), 2000);
  const bdT = { ...bd, y: new Int32Array(bd.n).fill(info.target) } as ImageSet;
  const rng = new Rng(0);
  const { train, val } = splitAux(aux, 0.2, rng);
  const work = victim.clone();
  const set = createBnMasks(work, 'anp', true);
  const opt = new SGD(Number(lr), 0.9);
  const noiseVars = [...set.noise, ...set.noiseBias];
  const B = Number(bs);
  let order = rng.permutation(train.n); let pos = 0;
  const t0 = Date.now();
  const cached = require('node:fs').existsSync(`/tmp/anp-masks-${victimName}-${iters}-${lr}-${eps}-${bs}-${alpha}.json`);
  for (let it = 0; it < (cached ? 0 : Number(iters)); it++) {
    if (pos + B > train.n) { order = rng.permutation(train.n); pos = 0; }
    const idx = order.subarray(pos, pos + B); pos += B;
    const x = makeBatch(train, idx, { cropPadding: 4, flip: false }, rng);
    const y = tf.tensor1d(Int32Array.from(idx, (i) => train.y[i]), 'int32');
    resetNoise(set, Number(eps), rng);
    const perturbed = maskHook(set, true, false);
    tf.tidy(() => {
      const { grads } = tf.variableGrads(() => crossEntropy(work.forward(x, { training: true, bnAffineHook: perturbed }), y), noiseVars);
      noiseVars.forEach((v) => v.assign(tf.clipByValue(tf.add(v, tf.mul(tf.sign(grads[v.name]), Number(eps))), -Number(eps), Number(eps))));
    });
    const clean = maskHook(set, false, false);
    tf.tidy(() => {
      const { value, grads } = tf.variableGrads(() => {
        const a = crossEntropy(work.forward(x, { training: true, bnAffineHook: clean }), y);
        const b = crossEntropy(work.forward(x, { training: true, bnAffineHook: perturbed }), y);
        return tf.add(tf.mul(a, Number(alpha)), tf.mul(b, 1 - Number(alpha))) as tf.Scalar;
      }, set.masks);
      opt.step(set.masks, set.masks.map((m) => grads[m.name]));
      value.dispose();
    });
    clipVariables(set.masks, 0, 1);
    x.dispose(); y.dispose();
    if ((it + 1) % 100 === 0) console.error(`it ${it + 1} ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  }
  const cacheFile = `/tmp/anp-masks-${victimName}-${iters}-${lr}-${eps}-${bs}-${alpha}.json`;
  const masks: Float32Array[] = cached ? (JSON.parse(require('node:fs').readFileSync(cacheFile, 'utf8')) as number[][]).map((a) => Float32Array.from(a)) : await readMasks(set);
  if (!cached) require('node:fs').writeFileSync(cacheFile, JSON.stringify(masks.map((a) => Array.from(a))));
  const all = masks.flatMap((m) => Array.from(m)).sort((a, b) => a - b);
  console.log('masks: n', all.length, 'quantiles', [0, 0.01, 0.05, 0.1, 0.25, 0.5].map((q) => all[Math.floor(q * (all.length - 1))].toFixed(3)).join(' '));
  console.log('victim val', (await accuracyOn(victim, val)).toFixed(3), 'test', (await accuracyOn(victim, test)).toFixed(3), 'asr', (await accuracyOn(victim, bdT)).toFixed(3));
  for (const th of [0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]) {
    const m = victim.clone();
    const pruned = pruneByThreshold(m, masks, th);
    console.log(`th ${th.toFixed(2)} pruned ${pruned} val ${(await accuracyOn(m, val)).toFixed(3)} test ${(await accuracyOn(m, test)).toFixed(3)} asr ${(await accuracyOn(m, bdT)).toFixed(3)}`);
    m.dispose();
  }
  // Greedy: channels in increasing mask order; each pruned only if it costs at most `drop` of val accuracy.
  for (const drop of [0, 0.01, 0.02]) {
    const m = victim.clone();
    const keep = masks.map((a) => Float32Array.from(a, () => 1));
    let acc = await accuracyOn(m, val);
    const base = acc;
    let pruned = 0;
    const order0: [number, number, number][] = [];
    masks.forEach((mm, l) => mm.forEach((v, c) => order0.push([v, l, c])));
    order0.sort((a, b) => a[0] - b[0]);
    for (const [v, l, c] of order0) {
      if (v > 0.9) break;
      const trial = victim.clone();
      keep[l][c] = 0;
      pruneByThreshold(trial, keep, 0.5);
      const a = await accuracyOn(trial, val);
      trial.dispose();
      if (a >= acc - drop - 1e-9 && a >= 0.9 * base) { acc = a; pruned++; } else keep[l][c] = 1;
    }
    pruneByThreshold(m, keep, 0.5);
    console.log(`greedy drop ${drop}: pruned ${pruned} val ${(await accuracyOn(m, val)).toFixed(3)} test ${(await accuracyOn(m, test)).toFixed(3)} asr ${(await accuracyOn(m, bdT)).toFixed(3)}`);
    m.dispose();
  }
  // Pruning by count (lowest masks first), as ANP's authors also offer.
  const flat: [number, number, number][] = [];
  masks.forEach((m, l) => m.forEach((v, c) => flat.push([v, l, c])));
  flat.sort((a, b) => a[0] - b[0]);
  for (const k of [5, 10, 20, 30, 50, 80]) {
    const m = victim.clone();
    const mm = masks.map((a) => Float32Array.from(a, () => 1));
    for (const [, l, c] of flat.slice(0, k)) mm[l][c] = 0;
    pruneByThreshold(m, mm, 0.5);
    console.log(`count ${k} (mask<=${flat[k - 1][0].toFixed(3)}) val ${(await accuracyOn(m, val)).toFixed(3)} test ${(await accuracyOn(m, test)).toFixed(3)} asr ${(await accuracyOn(m, bdT)).toFixed(3)}`);
    m.dispose();
  }
}
main().catch((e) => { console.error(e); process.exit(1); });
