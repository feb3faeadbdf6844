/**
 * A tiny backdoored victim for the defense tests: the demo's narrow Conv/BN/ReLU stack (`small-cnn`, 88
 * channels) trained for a few epochs on a seeded 2400-image subset of the embedded MNIST with BadNets (3x3 white corner patch, 10% poisoned, target
 * 0), or another attack; a disjoint class-balanced auxiliary set and a clean/triggered test split. Built once per test file.
 */
import { loadEmbeddedMnist, splitDisjoint } from '../../src/engine/formats/data/mnist';
import { makeAttack, poisonTrainingSet, triggeredTestSet, type AttackSpec } from '../../src/engine/attacks';
import { buildModel } from '../../src/engine/models';
import { SGD } from '../../src/engine/nn/optim';
import { fit } from '../../src/engine/nn/train';
import { Rng } from '../../src/engine/util/rng';
import { sampleBalanced } from '../../src/engine/auxdata/sample';
import { evaluateModel, type TriggeredSet } from '../../src/engine/metrics/evaluate';
import type { ImageSet } from '../../src/engine/data/dataset';
import type { Model } from '../../src/engine/nn/model';
import type { Metrics } from '../../src/shared/results';
import type { Defense, DefenseContext, DefenseParams, DefenseOutcome } from '../../src/engine/defenses/defense';
import { resolveParams } from '../../src/engine/defenses/defense';
import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { CancelledError } from '../../src/engine/errors';

export interface Fixture {
  victim: Model;
  aux: ImageSet;
  test: ImageSet;
  triggered: TriggeredSet;
  before: Metrics;
}

export const TARGET = 0;

/** `attack` replaces the BadNets patch (e.g. a low-ratio `blended` trigger that stays within an L_inf budget). */
export async function buildFixture(seed = 7, attackSpec: AttackSpec = { type: 'badnets' }): Promise<Fixture> {
  const rng = new Rng(seed);
  const split = splitDisjoint(loadEmbeddedMnist(), { train: 2400, pool: 600, test: 600 }, rng.fork('split'));
  const attack = makeAttack(attackSpec, split.train.shape, rng.fork('attack'));
  const poisoned = poisonTrainingSet(split.train, attack, { pratio: 0.1, target: TARGET, rng: rng.fork('poison') });
  const triggered = triggeredTestSet(split.test, attack, { target: TARGET });
  const victim = buildModel({ arch: 'small-cnn', inputShape: split.train.shape, numClasses: 10 }, { mean: [0.1307], std: [0.3081] }, seed);
  const opt = new SGD(0.05, 0.9, 5e-4);
  await fit(victim, poisoned.set, { epochs: 6, batchSize: 32, optimizer: opt, lr: 0.05, schedule: 'cosine', augment: { cropPadding: 2, flip: false }, rng: rng.fork('train'), dropLast: true });
  opt.dispose();
  const aux = sampleBalanced(split.pool, { size: 300 }, rng.fork('aux'));
  return { victim, aux, test: split.test, triggered, before: await evaluateModel(victim, split.test, triggered) };
}

/** Run a defense on the fixture with its `fast` defaults plus overrides. */
export async function runDefense(
  f: Fixture,
  d: Defense,
  overrides: DefenseParams = {},
  extra: Partial<DefenseContext> = {},
): Promise<{ out: DefenseOutcome; after: Metrics; progress: Array<[number, number]> }> {
  const progress: Array<[number, number]> = [];
  const out = await d.run({
    victim: f.victim,
    aux: f.aux,
    profile: 'fast',
    params: resolveParams(d, 'fast', overrides),
    augment: { cropPadding: 2, flip: false },
    rng: new Rng(1).fork(d.id),
    progress: (done, total) => progress.push([done, total]),
    ...extra,
  });
  const after = await evaluateModel(out.model, f.test, f.triggered);
  return { out, after, progress };
}

/**
 * Run `d` and cancel it at its first progress report; resolves to the `done` counts it reported. The run must
 * end with CancelledError and leave no tensor behind; callers check the reports (nothing runs after the cancel).
 */
export async function cancelAtFirstReport(f: Fixture, d: Defense): Promise<number[]> {
  const n0 = tf.memory().numTensors;
  const ac = new AbortController();
  const reports: number[] = [];
  await assert.rejects(
    runDefense(f, d, {}, {
      signal: ac.signal,
      progress: (done) => {
        reports.push(done);
        ac.abort();
      },
    }),
    CancelledError,
  );
  assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  return reports;
}
