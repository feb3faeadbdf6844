/**
 * Paired cells (common random numbers): the GIC-off and GIC-on cells of one (aux set, defense, seed) share their
 * random stream and auxiliary sample, so with GIC's transform replaced by the identity every GIC-on row must
 * equal its GIC-off row exactly, for defenses that draw a validation split (fp, anp), batch orders and
 * augmentation (ft) and adversarial noise (anp); while another seed, drawing another sample and stream, must
 * give other numbers. The summary then reports a GIC effect of exactly zero.
 */
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/engine/backend';
import { loadModelFile } from '../../src/engine/model_files/model_io';
import { loadEmbeddedMnist, splitDisjoint } from '../../src/engine/formats/data/mnist';
import { makeAttack, triggeredTestSet } from '../../src/engine/attacks';
import { sampleBalanced } from '../../src/engine/auxdata/sample';
import { Rng } from '../../src/engine/util/rng';
import { runPrepared, type PreparedAux, type PreparedJob } from '../../src/engine/jobs/core';
import { excludesZero } from '../../src/shared/summary';
import type { ResultRow } from '../../src/shared/results';
import { useWasm } from '../helpers/backend';

const VICTIM = path.join(__dirname, '..', '..', 'examples', 'mnist-badnets', 'victim.safetensors');

describe('paired cells: GIC off and on share their random stream', function () {
  this.timeout(600_000);
  before(useWasm);

  it('with an identity GIC, every GIC-on row equals its GIC-off row exactly', async () => {
    const backend = await initBackend('cpu');
    const tensors = tf.memory().numTensors;
    const loaded = loadModelFile(VICTIM, 'victim');
    const victim = loaded.model;
    const split = splitDisjoint(loadEmbeddedMnist(), { train: 100, pool: 600, test: 300 }, new Rng(0).fork('split'));
    const attack = makeAttack({ type: 'badnets' }, split.test.shape, new Rng(0).fork('attack'));
    const seeds = [0, 1];
    // Each seed draws its own sample, as the runner does.
    const aux: PreparedAux[] = seeds.map((seed) => ({ name: 'heldout', type: 'unseen', seed, set: sampleBalanced(split.pool, { perClass: 6 }, new Rng(seed).fork('aux')) }));
    let calibrations = 0;
    const job: PreparedJob = {
      victim,
      model: loaded.info,
      test: split.test,
      triggered: triggeredTestSet(split.test, attack, { target: 0 }),
      aux,
      defenses: [
        { id: 'ft', profile: 'fast', params: { epochs: 2 } },
        { id: 'fp', profile: 'fast', params: { epochs: 1 } },
        { id: 'anp', profile: 'fast', params: { iterations: 8 } },
      ],
      gicMode: 'both',
      augment: { cropPadding: 2, flip: false },
      seeds,
      // GIC replaced by the identity: a copy of the images, so the defenses get equal data through another array.
      calibrate: async (_v, a) => {
        calibrations++;
        const set = { ...a.set, x: a.set.x.slice(), y: a.set.y.slice() };
        return { set, entry: { aux: a.name, seed: a.seed, delta: 0.1, norm: 'inf', maxPerturbation: 0, meanPerturbation: 0, confidenceBefore: 0, confidenceAfter: 0, bnDistanceBefore: null, bnDistanceAfter: null, seconds: 0 } };
      },
    };
    try {
      const r = await runPrepared(job, { backend, workers: 1, emit: () => undefined });
      assert.equal(calibrations, 2, 'one calibration per (aux set, seed)');
      assert.equal(r.rows.length, 2 * 2 * 3);
      assert.deepEqual(
        r.rows.map((x) => `${x.seed}:${x.gic ? 'on' : 'off'}:${x.defense}`),
        ['0:off:ft', '0:off:fp', '0:off:anp', '0:on:ft', '0:on:fp', '0:on:anp', '1:off:ft', '1:off:fp', '1:off:anp', '1:on:ft', '1:on:fp', '1:on:anp'],
      );
      const outcome = (x: ResultRow) => ({ acc: x.acc, asr: x.asr, ra: x.ra, der: x.der, details: x.details, error: x.error });
      for (const on of r.rows.filter((x) => x.gic)) {
        const off = r.rows.find((x) => !x.gic && x.defense === on.defense && x.seed === on.seed)!;
        assert.equal(on.error, null, `${on.defense} seed ${on.seed}: ${on.error}`);
        assert.deepStrictEqual(outcome(on), outcome(off), `${on.defense} seed ${on.seed}`);
      }
      // The pairs are equal because they share a stream, not because the cells ignore it: seeds differ.
      for (const d of ['ft', 'fp', 'anp']) {
        const [s0, s1] = seeds.map((s) => r.rows.find((x) => !x.gic && x.defense === d && x.seed === s)!);
        assert.notDeepStrictEqual(outcome(s0), outcome(s1), `${d}: seeds 0 and 1 gave the same row`);
      }
      // The paired effect is exactly zero, with a zero-width interval, and never marked.
      assert.equal(r.gicEffect!.length, 3);
      for (const e of r.gicEffect!) {
        assert.equal(e.n, 2);
        for (const m of ['acc', 'asr', 'der'] as const) {
          assert.deepEqual(e[m], { mean: 0, lo: 0, hi: 0 }, `${e.defense} ${m}`);
          assert.equal(excludesZero(e[m]), false);
        }
      }
      assert.deepEqual(r.summary!.map((s) => [s.defense, s.gic, s.n]), [['ft', false, 2], ['fp', false, 2], ['anp', false, 2], ['ft', true, 2], ['fp', true, 2], ['anp', true, 2]]);
    } finally {
      victim.dispose();
    }
    assert.equal(tf.memory().numTensors, tensors, 'no tensor left behind');
  });
});
