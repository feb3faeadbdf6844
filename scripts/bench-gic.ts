/**
 * Benchmark of auxiliary data types and GIC on real data (a measurement, not a test): Debian's Fashion-MNIST
 * (IDX files), a BadNets small-cnn victim trained on a seeded subset of its training split, auxiliary sets
 * drawn from training images the victim never saw (`unseen`, `ood:noise`, `ood:brightness`) and `synthetic`
 * (model inversion), each defense on the fast profile with GIC off and on, through the job runner's cells
 * (core.ts) exactly as a job runs them; then a delta sweep of GIC on one OOD set (default `ood-noise`: a
 * brightness shift barely moves this victim's confidence, so there is little for GIC to recover there). Prints
 * the paper-style table (aux set x defense x GIC: ACC/ASR) and the GIC figures.
 *
 *   npx tsx scripts/bench-gic.ts [--data /usr/share/datasets/fashion-mnist] [--train 10000] [--aux-per-class 30]
 *        [--defenses ft,nad,anp,sau] [--aux unseen,ood-noise,ood-brightness,synthetic] [--sweep 0.03,0.1,0.2]
 *        [--sweep-aux ood-noise] [--gic-epochs 20] [--victim-cache FILE] [--json FILE] [--out DIR]
 *
 * --json FILE writes the results of the main run and of the sweep; --out DIR writes DIR/bench-gic.txt (the
 * tables as printed), DIR/bench-gic.json (unless --json names another file) and, per calibrated set, the GIC
 * network and calibrated images (gic-<aux>[-delta<d>].safetensors / .npz, named in each gic entry's `files`).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { initBackend } from '../src/engine/backend';
import { readIdxPair } from '../src/engine/formats/data/idx';
import { subset, type ImageSet } from '../src/engine/data/dataset';
import { makeAttack, poisonTrainingSet, triggeredTestSet } from '../src/engine/attacks';
import { buildModel } from '../src/engine/models';
import { SGD } from '../src/engine/nn/optim';
import { fit } from '../src/engine/nn/train';
import { Rng } from '../src/engine/util/rng';
import { sampleBalanced } from '../src/engine/auxdata/sample';
import { applyShift } from '../src/engine/auxdata/shifts';
import { synthesizeAuxSet } from '../src/engine/auxdata/synthetic';
import { calibrate } from '../src/engine/gic/gic';
import { saveCalibration } from '../src/engine/gic/save';
import { writeFileAtomic, writeJsonAtomic } from '../src/engine/util/atomic';
import { runPrepared, type PreparedAux, type PreparedJob } from '../src/engine/jobs/core';
import type { Results } from '../src/shared/results';
import { loadModelFile, saveModelFile } from '../src/engine/model_files/model_io';
import type { Model } from '../src/engine/nn/model';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const dataDir = opt('--data', '/usr/share/datasets/fashion-mnist');
const trainN = Number(opt('--train', '10000'));
const perClass = Number(opt('--aux-per-class', '30'));
const defenses = opt('--defenses', 'ft,nad,anp,sau').split(',');
const auxNames = opt('--aux', 'unseen,ood-noise,ood-brightness,synthetic').split(',');
const sweep = opt('--sweep', '0.03,0.1,0.2').split(',').filter(Boolean).map(Number);
const sweepAux = opt('--sweep-aux', 'ood-noise');
const gicEpochs = Number(opt('--gic-epochs', '20'));
const cache = opt('--victim-cache', '');
const outDir = opt('--out', '');
const jsonOut = opt('--json', outDir ? path.join(outDir, 'bench-gic.json') : '');
if (outDir) fs.mkdirSync(outDir, { recursive: true });

/** Everything printed to stdout, also kept for --out. */
const printed: string[] = [];
const print = (line: string) => {
  printed.push(line);
  process.stdout.write(`${line}\n`);
};

const pct = (v: number | null | undefined) => (v === undefined || v === null ? '   -  ' : `${(100 * v).toFixed(1).padStart(5)}%`);
const log = (m: string) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${m}\n`);

async function main(): Promise<void> {
  const backend = await initBackend('cpu');
  const seed = 0;
  const rng = new Rng(seed);
  const train = readIdxPair(path.join(dataDir, 'train-images-idx3-ubyte.gz'), undefined, 10);
  const testAll = readIdxPair(path.join(dataDir, 't10k-images-idx3-ubyte.gz'), undefined, 10);
  // The victim trains on a seeded subset of the training split; the rest of it is the pool of unseen data.
  const order = rng.fork('split').permutation(train.n);
  const victimTrain = subset(train, order.subarray(0, trainN));
  const pool = subset(train, order.subarray(trainN, trainN + 6000));
  const test = subset(testAll, rng.fork('test').permutation(testAll.n).subarray(0, 2000));
  const attack = makeAttack({ type: 'badnets' }, train.shape, rng.fork('attack'));
  const triggered = triggeredTestSet(test, attack, { target: 0 });
  const spec = { arch: 'small-cnn', inputShape: train.shape, numClasses: 10 };
  // Taken whether or not the victim comes from the cache: each fork consumes a draw of its parent, so skipping
  // these would give every later stream (the aux samples, shifts, inversion) other numbers than a training run's.
  const poisonRng = rng.fork('poison');
  const victimRng = rng.fork('victim');
  let victim: Model;
  if (cache && fs.existsSync(cache)) {
    victim = loadModelFile({ path: cache, arch: 'small-cnn', normalize: { mean: [0.286], std: [0.353] } }, 'victim cache').model;
    log(`victim from ${cache}`);
  } else {
    const poisoned = poisonTrainingSet(victimTrain, attack, { pratio: 0.1, target: 0, rng: poisonRng });
    victim = buildModel(spec, { mean: [0.286], std: [0.353] }, seed);
    const sgd = new SGD(0.05, 0.9, 5e-4);
    const epochs = 8;
    const t0 = Date.now();
    await fit(victim, poisoned.set, { epochs, batchSize: 64, optimizer: sgd, lr: 0.05, augment: { cropPadding: 2, flip: false }, rng: victimRng, dropLast: true });
    sgd.dispose();
    log(`victim trained on ${trainN} images, ${epochs} epochs, ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    if (cache) await saveModelFile(victim, cache, 'safetensors');
  }

  const unseen = sampleBalanced(pool, { perClass }, rng.fork('unseen'));
  const build: Record<string, () => Promise<ImageSet>> = {
    unseen: async () => unseen,
    'ood-noise': async () => applyShift(unseen, 'noise', rng.fork('noise')),
    'ood-brightness': async () => applyShift(unseen, 'brightness', rng.fork('brightness')),
    'ood-contrast': async () => applyShift(unseen, 'contrast', rng.fork('contrast')),
    'ood-blur': async () => applyShift(unseen, 'blur', rng.fork('blur')),
    synthetic: async () => synthesizeAuxSet(victim, { perClass, steps: 150 }, rng.fork('synthetic')),
  };
  const aux: PreparedAux[] = [];
  for (const name of auxNames) {
    if (!build[name]) throw new Error(`unknown aux set ${name} (known: ${Object.keys(build).join(', ')})`);
    const t0 = Date.now();
    aux.push({ name, type: name.startsWith('ood') ? 'ood' : name === 'unseen' ? 'unseen' : 'synthetic', seed, set: await build[name]() });
    log(`aux ${name}: ${aux[aux.length - 1].set.n} images, ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  }

  const job = (sets: PreparedAux[], gicMode: PreparedJob['gicMode'], delta: number): PreparedJob => ({
    victim,
    model: { path: '(bench)', format: 'memory', arch: spec.arch, params: victim.paramCount(), inputShape: spec.inputShape, numClasses: 10 },
    test,
    triggered,
    aux: sets,
    defenses: defenses.map((id) => ({ id, profile: 'fast' as const })),
    gicMode,
    augment: { cropPadding: 2, flip: false },
    seeds: [seed],
    calibrate: async (v, a, signal, progress) => {
      const out = await calibrate(v, a.set, { delta, norm: 'inf', epochs: gicEpochs, seed }, signal, progress);
      try {
        const files = outDir ? await saveCalibration(out.net, out.set, outDir, delta === 0.1 ? a.name : `${a.name}-delta${delta}`) : undefined;
        return { set: out.set, entry: { aux: a.name, ...out.report, ...(files ? { files } : {}) } };
      } finally {
        out.net.dispose();
      }
    },
  });
  const emit = (e: { type: string; row?: { aux: string; defense: string; gic: boolean; acc?: number | null; asr?: number | null; seconds: number; error: string | null } }) => {
    if (e.type === 'row' && e.row) log(`${e.row.aux} ${e.row.defense}${e.row.gic ? '+gic' : ''}: ACC ${pct(e.row.acc)} ASR ${pct(e.row.asr)} ${e.row.seconds.toFixed(0)} s${e.row.error ? ' error ' + e.row.error : ''}`);
  };

  const main = await runPrepared(job(aux, 'both', 0.1), { backend, emit });
  printTable(main, 'GIC delta 0.1 (L_inf)');
  const sweepRuns: Array<{ delta: number; results: Results }> = [];
  const sweepSet = aux.find((a) => a.name === sweepAux);
  if (sweep.length && !sweepSet) log(`no delta sweep: ${sweepAux} is not among the aux sets (${auxNames.join(', ')})`);
  if (sweepSet && sweep.length) {
    for (const delta of sweep) {
      if (delta === 0.1) {
        sweepRuns.push({ delta, results: main });
        continue;
      }
      sweepRuns.push({ delta, results: await runPrepared(job([sweepSet], 'on', delta), { backend, emit }) });
    }
    print(`\nDelta sweep on ${sweepAux} (GIC on; ACC/ASR; baseline ACC ${pct(main.baseline.acc)} ASR ${pct(main.baseline.asr)})`);
    print(['delta'.padEnd(6), 'conf before->after'.padEnd(19), 'BN dist before->after'.padEnd(22), ...defenses.map((d) => d.padStart(15))].join(' '));
    const off = defenses.map((d) => main.rows.find((r) => r.aux === sweepAux && !r.gic && r.defense === d));
    print(['off'.padEnd(6), ''.padEnd(19), ''.padEnd(22), ...off.map((r) => `${pct(r?.acc)}/${pct(r?.asr)}`.padStart(15))].join(' '));
    for (const { delta, results } of sweepRuns) {
      const g = results.gic.find((e) => e.aux === sweepAux)!;
      const rows = defenses.map((d) => results.rows.find((r) => r.aux === sweepAux && r.gic && r.defense === d));
      const bn = `${g.bnDistanceBefore?.toFixed(3)}->${g.bnDistanceAfter?.toFixed(3)}`;
      print([String(delta).padEnd(6), `${g.confidenceBefore.toFixed(3)}->${g.confidenceAfter.toFixed(3)}`.padEnd(19), bn.padEnd(22), ...rows.map((r) => `${pct(r?.acc)}/${pct(r?.asr)}`.padStart(15))].join(' '));
    }
  }
  if (jsonOut) writeJsonAtomic(jsonOut, { main, sweep: sweepRuns });
  if (outDir) writeFileAtomic(path.join(outDir, 'bench-gic.txt'), printed.join('\n') + '\n');
  victim.dispose();
}

function printTable(r: Results, title: string): void {
  print(`\nFashion-MNIST, BadNets small-cnn victim: ACC ${pct(r.baseline.acc)} ASR ${pct(r.baseline.asr)}; ${title}; cells ACC/ASR`);
  const defs = [...new Set(r.rows.map((x) => x.defense))];
  print(['aux'.padEnd(16), 'gic'.padEnd(4), ...defs.map((d) => d.padStart(15))].join(' '));
  for (const a of [...new Set(r.rows.map((x) => x.aux))]) {
    for (const gic of [false, true]) {
      const cells = defs.map((d) => r.rows.find((x) => x.aux === a && x.gic === gic && x.defense === d));
      if (cells.every((c) => !c)) continue;
      print([a.padEnd(16), (gic ? 'on' : 'off').padEnd(4), ...cells.map((c) => (c?.error ? 'error'.padStart(15) : `${pct(c?.acc)}/${pct(c?.asr)}`.padStart(15)))].join(' '));
    }
  }
  print('\nGIC per aux set: confidence on the true label before -> after, BN distance before -> after, max/mean ||g(x)-x||_inf, seconds');
  for (const g of r.gic) {
    print(`${g.aux.padEnd(16)} ${g.confidenceBefore.toFixed(3)} -> ${g.confidenceAfter.toFixed(3)}   ${g.bnDistanceBefore?.toFixed(3)} -> ${g.bnDistanceAfter?.toFixed(3)}   ${g.maxPerturbation.toFixed(3)}/${g.meanPerturbation.toFixed(3)}   ${g.seconds.toFixed(0)} s`);
  }
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
