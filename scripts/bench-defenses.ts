/**
 * Benchmark of the purification defenses (a measurement, not a test): the demo's BadNets victim on the
 * embedded MNIST (same seed, split, attack and training as `backdoor-audit demo`), its `unseen` auxiliary set,
 * each defense on the chosen profile; prints ACC, ASR, wall time and the row details per defense, then
 * how many of the new defenses (all but ft) halve the ASR and the median ACC drop.
 *
 *   npx tsx scripts/bench-defenses.ts [--profile fast] [--defenses fp,nad,...] [--victim-cache /tmp/victim.safetensors] [--first-index 0]
 *                                     [--set key=value ...]   (parameter overrides, applied to every listed defense that has them)
 */
import * as fs from 'node:fs';
import { initBackend } from '../src/engine/backend';
import { loadEmbeddedMnist, splitDisjoint } from '../src/engine/formats/data/mnist';
import { makeAttack, poisonTrainingSet, triggeredTestSet } from '../src/engine/attacks';
import { buildModel } from '../src/engine/models';
import { SGD } from '../src/engine/nn/optim';
import { fit } from '../src/engine/nn/train';
import { Rng } from '../src/engine/util/rng';
import { sampleBalanced } from '../src/engine/auxdata/sample';
import { evaluateModel } from '../src/engine/metrics/evaluate';
import { getDefense } from '../src/engine/defenses';
import { resolveParams, type DefenseParams, type Profile } from '../src/engine/defenses/defense';
import { loadModelFile, saveModelFile } from '../src/engine/model_files/model_io';
import { oneLine } from '../src/engine/errors';
import * as tf from '@tensorflow/tfjs-core';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const profile = opt('--profile', 'fast') as Profile;
const ids = opt('--defenses', 'ft,fp,nad,anp,ibau,sau,ftsam,fst,npd,rnp,clp,nc').split(',');
const cache = opt('--victim-cache', '');
// The cell index seeds each defense's random stream as in a job (cell:<index>:...); by default the list position.
const firstIndex = Number(opt('--first-index', '0'));
const overrides: DefenseParams = {};
args.forEach((a, i) => {
  if (a === '--set') {
    const [k, v] = args[i + 1].split('=');
    overrides[k] = Number.isNaN(Number(v)) ? v : Number(v);
  }
});

async function main(): Promise<void> {
  const backend = await initBackend('cpu');
  // The demo's data and victim (src/engine/jobs/demo.ts): the same seed and rng forks.
  const seed = 0;
  const rng = new Rng(seed);
  const all = loadEmbeddedMnist();
  const split = splitDisjoint(all, { train: 6000, pool: 2000, test: 2000 }, rng.fork('split'));
  const attack = makeAttack({ type: 'badnets' }, split.train.shape, rng.fork('attack'));
  const poisoned = poisonTrainingSet(split.train, attack, { pratio: 0.1, target: 0, rng: rng.fork('poison') });
  const triggered = triggeredTestSet(split.test, attack, { target: 0 });
  const spec = { arch: 'small-cnn', inputShape: split.train.shape, numClasses: 10 };
  let victim;
  if (cache && fs.existsSync(cache)) {
    victim = loadModelFile(cache, 'victim cache').model;
  } else {
    victim = buildModel(spec, { mean: [0.1307], std: [0.3081] }, seed);
    const sgd = new SGD(0.05, 0.9, 5e-4);
    const trainRng = rng.fork('victim');
    const epochs = 6;
    for (let e = 0; e < epochs; e++) {
      await fit(victim, poisoned.set, { epochs: 1, batchSize: 64, optimizer: sgd, lr: (0.05 * (1 + Math.cos((Math.PI * e) / epochs))) / 2, schedule: 'constant', augment: { cropPadding: 2, flip: false }, rng: trainRng, dropLast: true });
    }
    sgd.dispose();
    if (cache) await saveModelFile(victim, cache, 'safetensors');
  }
  const auxSize = Math.round(0.05 * split.train.n);
  const unseen = sampleBalanced(split.pool, { size: auxSize }, rng.fork('unseen'));
  const base = await evaluateModel(victim, split.test, triggered);
  console.log(`backend ${backend.name} x${backend.threads}; victim ACC ${base.acc.toFixed(3)} ASR ${base.asr.toFixed(3)}; unseen aux ${unseen.n} images; profile ${profile}`);
  const rows: Array<{ id: string; acc: number; asr: number; seconds: number; error?: string }> = [];
  for (const [i, id] of ids.entries()) {
    const d = getDefense(id);
    if (!d) throw new Error(`unknown defense ${id}`);
    const own = Object.fromEntries(Object.entries(overrides).filter(([k]) => k in d.defaults(profile)));
    const t0 = Date.now();
    const before = tf.memory().numTensors;
    try {
      const params = resolveParams(d, profile, own);
      const cellRng = new Rng(seed).fork(`cell:${firstIndex + i}:unseen:false:${id}`);
      const out = await d.run({ victim, aux: unseen, profile, params, augment: { cropPadding: 2, flip: false }, rng: cellRng, progress: () => undefined });
      const seconds = (Date.now() - t0) / 1000;
      const m = await evaluateModel(out.model, split.test, triggered);
      out.model.dispose();
      rows.push({ id, acc: m.acc, asr: m.asr, seconds });
      const leak = tf.memory().numTensors - before;
      console.log(`${id.padEnd(6)} ACC ${m.acc.toFixed(3)} ASR ${m.asr.toFixed(3)} ${seconds.toFixed(1).padStart(6)} s ${JSON.stringify(out.details ?? {})}${out.detection ? ' detection ' + JSON.stringify(out.detection) : ''}${leak ? ` LEAKED ${leak} tensors` : ''}`);
    } catch (e) {
      rows.push({ id, acc: NaN, asr: NaN, seconds: (Date.now() - t0) / 1000, error: oneLine(e) });
      console.log(`${id.padEnd(6)} ERROR ${oneLine(e)}`);
    }
  }
  const fresh = rows.filter((r) => r.id !== 'ft' && !r.error);
  const halved = fresh.filter((r) => r.asr <= base.asr / 2).length;
  const drops = fresh.map((r) => base.acc - r.acc).sort((a, b) => a - b);
  const median = drops.length ? (drops.length % 2 ? drops[drops.length >> 1] : (drops[drops.length / 2 - 1] + drops[drops.length / 2]) / 2) : NaN;
  console.log('\n| defense | ACC | ASR | seconds |\n|---|---|---|---|');
  console.log(`| (victim) | ${base.acc.toFixed(3)} | ${base.asr.toFixed(3)} | |`);
  for (const r of rows) console.log(r.error ? `| ${r.id} | error: ${r.error} | | ${r.seconds.toFixed(1)} |` : `| ${r.id} | ${r.acc.toFixed(3)} | ${r.asr.toFixed(3)} | ${r.seconds.toFixed(1)} |`);
  console.log(`\nnew defenses halving ASR: ${halved}/${fresh.length}; errors: ${rows.filter((r) => r.error).length}; median ACC drop (new defenses): ${median.toFixed(3)}`);
  victim.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
