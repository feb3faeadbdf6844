/**
 * GIC's calibration timed both ways on a zoo victim folder (a measurement, not a test): the network passes in
 * ONNX Runtime (what jobs do where it loads) and on the backend alone, the same options and seed, with the
 * calibration figures of each, which should agree to float32 rounding.
 *
 *   npx tsx scripts/time-gic.ts [victim dir, default test/fixtures/zoo/preact8-badnets] [epochs, default 30] [ONNX Runtime threads, default 1]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { initBackend } from '../src/engine/backend';
import { loadModelFile } from '../src/engine/model_files/model_io';
import { readNpyPair } from '../src/engine/formats/data/npy';
import { calibrate } from '../src/engine/gic/gic';

async function main(): Promise<void> {
  const dir = process.argv[2] ?? path.join(__dirname, '..', 'test', 'fixtures', 'zoo', 'preact8-badnets');
  const epochs = Number(process.argv[3] ?? 30);
  const threads = Number(process.argv[4] ?? 1);
  const meta = JSON.parse(fs.readFileSync(path.join(dir, 'victim.json'), 'utf8')) as { inputShape: [number, number, number]; numClasses: number; normalize?: { mean: number[]; std: number[] } };
  await initBackend('cpu');
  const loaded = loadModelFile({ path: path.join(dir, 'victim.pt'), inputShape: meta.inputShape, numClasses: meta.numClasses, normalize: meta.normalize }, 'victim');
  const aux = readNpyPair(path.join(dir, 'aux_x.npy'), path.join(dir, 'aux_y.npy'), { shape: meta.inputShape, numClasses: meta.numClasses });
  console.log(`GIC on ${dir}: ${aux.n} auxiliary images, ${epochs} epochs`);
  for (const ortTraining of [true, false]) {
    const t0 = Date.now();
    const out = await calibrate(loaded.model, aux, { epochs }, undefined, undefined, { ortTraining, threads });
    const r = out.report;
    out.net.dispose();
    const f = (v: number | null) => (v === null ? 'n/a' : v.toFixed(4));
    console.log(`${(r.engine ?? 'backend').padEnd(11)} ${((Date.now() - t0) / 1000).toFixed(1)} s  confidence ${f(r.confidenceBefore)} -> ${f(r.confidenceAfter)}  BN distance ${f(r.bnDistanceBefore)} -> ${f(r.bnDistanceAfter)}  max |g(x)-x| ${f(r.maxPerturbation)}`);
  }
  loaded.model.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
