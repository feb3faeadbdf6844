/** The CLI's results table carries the numbers as percentages; progress off a terminal is plain, rate-limited lines. */
import { strict as assert } from 'node:assert';
import { formatResultsTable, pct } from '../../src/cli/table';
import { createProgressReporter } from '../../src/cli/progress';
import type { Results } from '../../src/shared/results';
import { gicEffectOfRows, summarizeRows } from '../../src/shared/summary';

const results: Results = {
  schema: 'backdoor-audit/results@1',
  backend: { name: 'wasm', threads: 2 },
  model: { path: '/m/victim.safetensors', format: 'safetensors', arch: 'small-cnn', params: 12345, inputShape: [28, 28, 1], numClasses: 10 },
  baseline: { acc: 0.9876, asr: 0.9991, ra: 0.0012 },
  rows: [
    { aux: 'heldout', auxType: 'unseen', gic: false, defense: 'ft', acc: 0.9712, asr: 0.0345, ra: 0.9501, der: 0.9741, seconds: 12.34, output: 'ft-heldout.safetensors', error: null },
    { aux: 'heldout', auxType: 'unseen', gic: true, defense: 'ft', acc: 0.9756, asr: 0.0211, ra: 0.962, der: 0.9829, seconds: 13.5, output: 'ft-heldout-gic.safetensors', error: null },
    { aux: 'dark', auxType: 'ood', gic: false, defense: 'anp', seconds: 0.4, output: null, error: 'the auxiliary set has 3 images, anp needs at least 10 for its validation split' },
  ],
  gic: [
    { aux: 'heldout', delta: 0.1, norm: 'inf', maxPerturbation: 0.1, meanPerturbation: 0.0421, confidenceBefore: 0.812, confidenceAfter: 0.955, bnDistanceBefore: 1.234, bnDistanceAfter: 0.456, seconds: 7.25 },
  ],
  embeddings: [],
  detection: { nc: { anomalyIndex: [3.21, 0.5, 0.7], flagged: [0] } },
};

describe('CLI output', () => {
  it('percentages with one decimal, "-" for missing values, "n/a" for what cannot be measured (null)', () => {
    assert.deepEqual([pct(0.9876), pct(1), pct(0), pct(undefined), pct(null), pct(NaN)], ['98.8', '100.0', '0.0', '-', 'n/a', '-']);
  });

  it('the results table has the baseline, one row per cell with ACC/ASR/RA/DER, seconds and errors, and the GIC summary', () => {
    const text = formatResultsTable(results, { tty: false });
    assert.match(text, /baseline: ACC 98\.8%  ASR 99\.9%  RA 0\.1%/);
    assert.match(text, /small-cnn \(safetensors, 12,345 parameters, input 28x28x1, 10 classes\) on wasm, 2 threads/);
    const lines = text.split('\n');
    const row = (needle: RegExp) => lines.find((l) => needle.test(l)) ?? assert.fail(`no line matches ${needle}`);
    const cells = (l: string) => l.split('|').map((c) => c.trim()).filter(Boolean);
    assert.deepEqual(cells(row(/heldout.*\boff\b.*ft/)), ['heldout', 'unseen', 'off', 'ft', '97.1', '3.5', '95.0', '97.4', '12.3']);
    assert.deepEqual(cells(row(/heldout.*\bon\b.*ft/)).slice(4), ['97.6', '2.1', '96.2', '98.3', '13.5']);
    const failed = cells(row(/dark/));
    assert.deepEqual(failed.slice(0, 9), ['dark', 'ood', 'off', 'anp', '-', '-', '-', '-', '0.4']);
    assert.match(failed[9], /^the auxiliary set has 3 images/);
    // GIC: bound, perturbation, confidence and BN distance before -> after.
    const gic = cells(row(/Linf <= 0\.1/));
    assert.deepEqual(gic, ['heldout', 'Linf <= 0.1', '0.1000 / 0.0421', '0.812 -> 0.955', '1.234 -> 0.456', '7.3']);
    assert.match(text, /Neural Cleanse: flagged label 0 \(anomaly index per label: 3\.21, 0\.50, 0\.70\)/);
  });

  it('plain ASCII without colour codes when not on a terminal', () => {
    const text = formatResultsTable(results, { tty: false });
    assert.ok(/^[\x20-\x7e\n]*$/.test(text), 'printable ASCII only');
    assert.ok(formatResultsTable({ ...results, gic: [] }, false).indexOf('GIC on aux') < 0, 'no GIC table without GIC entries');
  });

  it('with several seeds: a seed column, mean +- std per (aux, defense, GIC) and the starred paired GIC effect', () => {
    const row = (seed: number, gic: boolean, acc: number, asr: number) => ({ aux: 'heldout', auxType: 'unseen', gic, defense: 'ft', seed, acc, asr, ra: 0.5, der: 0.5, seconds: 1, output: null, error: null });
    const rows = [row(0, false, 0.9, 0.3), row(0, true, 0.92, 0.1), row(1, false, 0.8, 0.5), row(1, true, 0.85, 0.2), row(2, false, 0.85, 0.4), row(2, true, 0.86, 0.25)];
    const r: Results = { ...results, rows, gic: [], summary: summarizeRows(rows), gicEffect: gicEffectOfRows(rows) };
    const text = formatResultsTable(r, { tty: false });
    assert.ok(/^[\x20-\x7e\n]*$/.test(text), 'printable ASCII only');
    const lines = text.split('\n');
    const cells = (l: string) => l.split('|').map((c) => c.trim()).filter(Boolean);
    assert.deepEqual(cells(lines.find((l) => /\bon\b.*ft.*\b2\b.*86\.0/.test(l))!).slice(0, 6), ['heldout', 'unseen', 'on', 'ft', '2', '86.0']);
    // ACC off: 0.9, 0.8, 0.85 -> mean 85.0, std 5.0 points; ASR on: 0.1, 0.2, 0.25 -> 18.3 +- 7.6.
    assert.deepEqual(cells(lines.find((l) => /heldout.*ft.*\boff\b.*\+-/.test(l))!), ['heldout', 'ft', 'off', '3', '85.0 +- 5.0', '40.0 +- 10.0', '50.0 +- 0.0']);
    assert.deepEqual(cells(lines.find((l) => /heldout.*ft.*\bon\b.*\+-/.test(l))!).slice(5, 6), ['18.3 +- 7.6']);
    // ASR on - off: -20, -30, -15 points: mean -21.7, sd 7.64, half-width 4.303 * 7.64 / sqrt(3) = 19.0 ->
    // [-40.6, -2.7], starred. ACC on - off: +2, +5, +1: mean 2.7, sd 2.08, half-width 5.2 -> [-2.5, +7.8].
    const eff = cells(lines.find((l) => /heldout.*ft.*\[/.test(l))!);
    assert.deepEqual(eff, ['heldout', 'ft', '3', '+2.7 [-2.5, +7.8]', '-21.7 [-40.6, -2.7] *', '+0.0 [+0.0, +0.0]']);
  });

  describe('progress off a terminal', () => {
    const sink = () => {
      const lines: string[] = [];
      return { lines, stream: { isTTY: false, write: (s: string) => lines.push(...s.split('\n').filter(Boolean)) } };
    };

    it('prints [stage] done/total message lines, rate-limited per stage, always the first and the last', () => {
      const { lines, stream } = sink();
      let t = 0;
      const report = createProgressReporter(stream, { intervalMs: 1000, now: () => t });
      for (let i = 1; i <= 100; i++) {
        t += 50; // 100 updates over 5 s
        report({ type: 'progress', stage: 'ft on heldout', done: i, total: 100, message: `loss ${(1 / i).toFixed(2)}` });
      }
      assert.equal(lines[0], '[ft on heldout] 1/100 loss 1.00');
      assert.equal(lines[lines.length - 1], '[ft on heldout] 100/100 loss 0.01');
      assert.ok(lines.length >= 5 && lines.length <= 7, `${lines.length} lines for 5 s at one per second`);
      assert.ok(lines.every((l) => /^\[ft on heldout\] \d+\/100 loss \d\.\d\d$/.test(l)), lines.join('\n'));
    });

    it('limits interleaved stages independently and prints rows, baseline and logs as lines', () => {
      const { lines, stream } = sink();
      const report = createProgressReporter(stream, { now: () => 0 });
      report({ type: 'started', jobPath: 'a.json', outDir: '/o', cells: 2, backend: 'wasm', threads: 1 });
      report({ type: 'baseline', model: results.model, baseline: results.baseline });
      report({ type: 'progress', stage: 'gic heldout', done: 1, total: 3 });
      report({ type: 'progress', stage: 'ft on heldout', done: 1, total: 3 });
      report({ type: 'progress', stage: 'gic heldout', done: 2, total: 3 }); // within the interval: dropped
      report({ type: 'progress', stage: 'gic heldout', done: 3, total: 3 }); // last: kept
      report({ type: 'row', row: results.rows[0] });
      report({ type: 'row', row: results.rows[2] });
      report({ type: 'log', message: 'warning: something' });
      report({ type: 'done', results, resultsPath: '/o/results.json' });
      assert.deepEqual(lines, [
        'backend: wasm (1 thread), 2 cells, output in /o',
        'baseline: ACC 98.8% ASR 99.9% RA 0.1%',
        '[gic heldout] 1/3',
        '[ft on heldout] 1/3',
        '[gic heldout] 3/3',
        'ft on heldout: ACC 97.1% ASR 3.5% RA 95.0% DER 97.4% (12.3 s)',
        'anp on dark: error: the auxiliary set has 3 images, anp needs at least 10 for its validation split',
        'warning: something',
      ]);
    });
  });
});
