/**
 * The statistics behind repeated runs: Student t quantiles against published table values, and summary[] /
 * gicEffect[] folded from rows against numbers worked out by hand (means, sample standard deviations, paired
 * differences and their 95% t-intervals; failed runs and unpaired seeds left out).
 */
import { strict as assert } from 'node:assert';
import { mean, sampleStd, studentTCdf, studentTQuantile, tInterval } from '../../src/shared/stats';
import { excludesZero, gicEffectOfRows, summarizeRows } from '../../src/shared/summary';
import type { ResultRow } from '../../src/shared/results';

const close = (a: number | null | undefined, b: number, tol = 1e-9, what = '') => assert.ok(typeof a === 'number' && Math.abs(a - b) <= tol, `${what}: ${a} vs ${b}`);

describe('repeats: t quantiles', () => {
  it('match the published two-sided 95% and 99% values', () => {
    // t_{0.975, df} and t_{0.995, df} from standard tables (6 decimals).
    const table: Array<[number, number, number]> = [
      [1, 12.706205, 63.656741],
      [2, 4.302653, 9.924843],
      [4, 2.776445, 4.604095],
      [9, 2.262157, 3.249836],
      [29, 2.04523, 2.756386],
    ];
    for (const [df, q975, q995] of table) {
      close(studentTQuantile(0.975, df), q975, 5e-6, `df ${df} 0.975`);
      close(studentTQuantile(0.995, df), q995, 5e-6, `df ${df} 0.995`);
      close(studentTQuantile(0.025, df), -q975, 5e-6, `df ${df} 0.025`);
    }
    // Large df tends to the normal quantile.
    close(studentTQuantile(0.975, 1e6), 1.959966, 1e-5, 'df 1e6');
    close(studentTCdf(0, 3), 0.5, 1e-12, 'cdf(0)');
    // df 1 is the Cauchy distribution: P(T <= 1) = 3/4.
    close(studentTCdf(1, 1), 0.75, 1e-10, 'Cauchy cdf(1)');
    assert.throws(() => studentTQuantile(1, 3), RangeError);
  });

  it('give the interval of a mean', () => {
    assert.equal(mean([1, 2, 3, 4, 5]), 3);
    close(sampleStd([1, 2, 3, 4, 5]), Math.sqrt(2.5));
    assert.equal(sampleStd([7]), null);
    const i = tInterval([1, 2, 3, 4, 5]);
    const half = (2.776445105 * Math.sqrt(2.5)) / Math.sqrt(5);
    close(i.lo, 3 - half, 1e-8, 'lo');
    close(i.hi, 3 + half, 1e-8, 'hi');
    assert.deepEqual(tInterval([0.4]), { mean: 0.4, lo: null, hi: null });
  });
});

describe('repeats: summary and paired GIC effect', () => {
  const row = (seed: number, gic: boolean, acc: number, asr: number, error: string | null = null): ResultRow => ({
    aux: 'heldout',
    auxType: 'unseen',
    gic,
    defense: 'ft',
    seed,
    acc: error ? undefined : acc,
    asr: error ? undefined : asr,
    ra: error ? undefined : 0.5,
    der: error ? undefined : (1 - asr + 1 - (1 - acc)) / 2,
    seconds: 1,
    error,
  });
  // Seeds 0..3; seed 3's GIC-on run failed, so only three seeds pair.
  const rows: ResultRow[] = [
    row(0, false, 0.9, 0.3),
    row(0, true, 0.92, 0.1),
    row(1, false, 0.8, 0.5),
    row(1, true, 0.85, 0.2),
    row(2, false, 0.85, 0.4),
    row(2, true, 0.86, 0.25),
    row(3, false, 0.7, 0.6),
    row(3, true, 0, 0, 'boom'),
  ];

  it('summarises each (aux, defense, GIC) over its successful runs', () => {
    const s = summarizeRows(rows);
    assert.deepEqual(s.map((e) => [e.aux, e.defense, e.gic, e.n]), [['heldout', 'ft', false, 4], ['heldout', 'ft', true, 3]]);
    close(s[0].acc!.mean, (0.9 + 0.8 + 0.85 + 0.7) / 4);
    // Sample std of 0.9, 0.8, 0.85, 0.7: mean 0.8125, squares 0.00765625 + 0.00015625 + 0.00140625 + 0.01265625.
    close(s[0].acc!.std, Math.sqrt(0.021875 / 3), 1e-12, 'acc std');
    close(s[1].asr!.mean, (0.1 + 0.2 + 0.25) / 3);
  });

  it('pairs GIC on with off per seed and gives a 95% t-interval of the difference', () => {
    const [e] = gicEffectOfRows(rows);
    assert.equal(e.n, 3);
    // ASR differences on - off: -0.2, -0.3, -0.15: mean -0.21667, sd 0.076376, t_{0.975,2} = 4.302653.
    close(e.asr!.mean, -0.65 / 3, 1e-12, 'mean');
    const sd = Math.sqrt(((0.2 - 0.65 / 3) ** 2 + (0.3 - 0.65 / 3) ** 2 + (0.15 - 0.65 / 3) ** 2) / 2);
    close(e.asr!.lo, -0.65 / 3 - (4.302653 * sd) / Math.sqrt(3), 1e-6, 'lo');
    close(e.asr!.hi, -0.65 / 3 + (4.302653 * sd) / Math.sqrt(3), 1e-6, 'hi');
    assert.equal(excludesZero(e.asr), true, 'ASR falls with GIC in every seed');
    // ACC differences 0.02, 0.05, 0.01: the interval straddles zero.
    assert.equal(excludesZero(e.acc), false);
  });

  it('leaves spreads and intervals out where they are undefined', () => {
    const single = summarizeRows([row(0, false, 0.9, 0.3)]);
    assert.deepEqual(single[0].acc, { mean: 0.9, std: null });
    const [e] = gicEffectOfRows([row(0, false, 0.9, 0.3), row(0, true, 0.95, 0.1)]);
    assert.equal(e.n, 1);
    close(e.acc!.mean, 0.05, 1e-12);
    assert.equal(e.acc!.lo, null);
    assert.equal(excludesZero(e.acc), false);
    // GIC off only: no effect to report; an unknown attack's ASR (absent) is not summarised.
    assert.deepEqual(gicEffectOfRows([row(0, false, 0.9, 0.3)]), []);
    const noAsr = summarizeRows([{ ...row(0, false, 0.9, 0.3), asr: undefined, der: undefined }]);
    assert.equal(noAsr[0].asr, null);
    assert.equal(noAsr[0].n, 1);
  });
});
