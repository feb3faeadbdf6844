/** Probe: NC's trigger reversal on a zoo victim: per-label mask L1, success rate and anomaly index. */
import * as path from 'node:path';
import { initBackend } from '../../src/engine/backend';
import { loadModelFile } from '../../src/engine/model_files/model_io';
import { readNpyPair } from '../../src/engine/formats/data/npy';
import { detectTriggers, nc } from '../../src/engine/defenses/nc';
import { Rng } from '../../src/engine/util/rng';

async function main() {
  const [victimName, overrides = '{}', seed = '0'] = process.argv.slice(2);
  await initBackend('auto');
  const dir = path.join('zoo', victimName);
  const info = require(path.resolve(dir, 'victim.json'));
  const file = require('node:fs').existsSync(path.join(dir, 'victim.pt')) ? path.join(dir, 'victim.pt') : path.join(dir, 'victim.onnx');
  const ref = file.endsWith('.onnx') ? { path: file, normalize: info.normalize } : { path: file, inputShape: info.inputShape, numClasses: info.numClasses, normalize: info.normalize };
  const { model: victim } = loadModelFile(ref as never, victimName);
  const aux = readNpyPair(path.join(dir, 'aux_x.npy'), path.join(dir, 'aux_y.npy'), { shape: info.inputShape, numClasses: info.numClasses });
  const params = { ...nc.defaults('fast'), ...JSON.parse(overrides) };
  const t0 = Date.now();
  const r = await detectTriggers({ victim, aux, profile: 'fast', params, augment: { cropPadding: 0, flip: false }, rng: new Rng(Number(seed)), progress: () => {} } as never);
  r.triggers.forEach((t, i) => console.log(`label ${t.label} l1 ${t.l1.toFixed(1)} success ${t.successRate.toFixed(2)} anomaly ${r.detection.anomalyIndex[i]}`));
  console.log('flagged', r.flagged, 'target', info.target, `${((Date.now() - t0) / 1000).toFixed(0)} s`);
}
main().catch((e) => { console.error(e); process.exit(1); });
