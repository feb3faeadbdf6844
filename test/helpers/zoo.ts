/**
 * A committed zoo victim (test/fixtures/zoo/<name>/, written by scripts/zoo/make_test_fixture.py): the model as
 * the engine is given it, its auxiliary images, the clean test subset and its triggered copies (target 0), the
 * victim's metrics as we measure them and as PyTorch measured them, and a default-profile job over it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadModelFile } from '../../src/engine/model_files/model_io';
import { readNpyPair } from '../../src/engine/formats/data/npy';
import { evaluateModel, type TriggeredSet } from '../../src/engine/metrics/evaluate';
import type { PreparedJob } from '../../src/engine/jobs/core';
import type { ImageSet } from '../../src/engine/data/dataset';
import type { Metrics } from '../../src/shared/results';

export const ZOO_TARGET = 0;

export interface ZooFixture {
  loaded: ReturnType<typeof loadModelFile>;
  aux: ImageSet;
  test: ImageSet;
  triggered: TriggeredSet;
  /** Our ACC/ASR/RA of the victim on the subset. */
  baseline: Metrics;
  /** PyTorch's, from subset-metrics.json. */
  torch: Metrics;
}

export async function loadZooFixture(name: string): Promise<ZooFixture> {
  const dir = path.join(__dirname, '..', 'fixtures', 'zoo', name);
  const normalize = { mean: [0.286], std: [0.353] };
  const onnx = path.join(dir, 'victim.onnx');
  const loaded = fs.existsSync(onnx)
    ? loadModelFile({ path: onnx, normalize }, 'zoo victim')
    : loadModelFile({ path: path.join(dir, 'victim.pt'), inputShape: [28, 28, 1], numClasses: 10, normalize }, 'zoo victim');
  const target = { shape: [28, 28, 1] as [number, number, number], numClasses: 10 };
  const aux = readNpyPair(path.join(dir, 'aux_x.npy'), path.join(dir, 'aux_y.npy'), target);
  const test = readNpyPair(path.join(dir, 'test_x.npy'), path.join(dir, 'test_y.npy'), target);
  const bd = readNpyPair(path.join(dir, 'bd_x.npy'), path.join(dir, 'bd_y.npy'), target);
  const triggered = { set: bd, attackLabels: new Int32Array(bd.n).fill(ZOO_TARGET) };
  const baseline = await evaluateModel(loaded.model, test, triggered);
  const torch = JSON.parse(fs.readFileSync(path.join(dir, 'subset-metrics.json'), 'utf8')) as Metrics;
  return { loaded, aux, test, triggered, baseline, torch };
}

/** The default-profile job of `defenses` on the fixture, one unseen aux set, seed 0, as `backdoor-audit run` makes it. */
export function zooJob(z: ZooFixture, defenses: string[]): PreparedJob {
  return {
    victim: z.loaded.model,
    model: z.loaded.info,
    test: z.test,
    triggered: z.triggered,
    aux: [{ name: 'unseen', type: 'unseen', seed: 0, set: z.aux }],
    defenses: defenses.map((id) => ({ id, profile: 'fast' as const })),
    gicMode: 'off',
    augment: { cropPadding: 4, flip: false },
    seeds: [0],
  };
}
