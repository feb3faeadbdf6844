/**
 * Parser fuzzing (seeded, bounded): every reader of an untrusted file - pickle, .pt zip, safetensors, npy,
 * npz, IDX (plain and gzip), CIFAR-10 batches, PNG and JPEG image folders, ONNX, TensorFlow.js model.json and
 * weight shards, audit.json, and each format added to test/fuzz/cases.ts - gets its valid files mutated (bit
 * flips, damaged bytes, truncations, inflated length fields, decimal sizes, splices, crossovers, protobuf
 * varints; PNG CRCs repaired after most mutations) plus hand-made hostile inputs. Each read must succeed or
 * throw InputError; it must not hang (a watchdog stops the worker), crash with another error type, leave
 * tensors behind, or hold or peak at memory beyond a bound from the file's size.
 */
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { CaseSummary, Finding } from '../fuzz/run';

/** Mutations per reader. Fixed seed: a finding is reproduced by its seed and index. */
const PER_CASE = Number(process.env.FUZZ_PER_CASE ?? 220);
const SEED = Number(process.env.FUZZ_SEED ?? 20261125);
/** No reader of a small file may take this long for one input. */
const HANG_MS = 15_000;

interface Report {
  summaries: CaseSummary[];
  findings: Finding[];
  hang?: string;
}

function fuzzInWorker(): Promise<Report> {
  return new Promise((resolve, reject) => {
    const tsx = require.resolve('tsx/cjs');
    const entry = path.join(__dirname, '..', 'fuzz', 'worker.ts');
    const w = new Worker(`require(${JSON.stringify(tsx)}); require(${JSON.stringify(entry)});`, {
      eval: true,
      workerData: { seed: SEED, perCase: PER_CASE, only: process.env.FUZZ_ONLY?.split(',') },
      // A reader that allocates from a lying header hits this ceiling instead of the machine's memory.
      resourceLimits: { maxOldGenerationSizeMb: 768 },
    });
    let last = '(starting)';
    let timer: NodeJS.Timeout;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        void w.terminate();
        resolve({ summaries: [], findings: [], hang: last });
      }, HANG_MS);
    };
    arm();
    w.on('message', (m: { type: string; label?: string } & Report) => {
      if (m.type === 'start') {
        last = m.label!;
        arm();
      } else if (m.type === 'done') {
        clearTimeout(timer);
        resolve({ summaries: m.summaries, findings: m.findings });
      }
    });
    w.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`fuzz worker died at ${last}: ${e.message}`));
    });
  });
}

describe('hardening: parser fuzzing', function () {
  this.timeout(120_000);
  let report: Report;

  before(async () => {
    report = await fuzzInWorker();
    for (const s of report.summaries) {
      const o = s.outcomes;
      process.stdout.write(
        `      fuzz ${s.name}: ${s.cases} cases, ok ${o.ok}, InputError ${o.InputError}, untyped ${o.untyped}, over-allocation ${o.alloc}, max growth ${s.maxGrowthPerByte.toFixed(1)} B/B, max peak ${(s.maxPeakBytes / 2 ** 20).toFixed(1)} MiB, ${(s.ms / 1000).toFixed(1)} s\n`,
      );
    }
    const total = report.summaries.reduce((a, s) => a + s.cases, 0);
    process.stdout.write(`      fuzz total: ${total} cases over ${report.summaries.length} readers (seed ${SEED})\n`);
    if (process.env.FUZZ_REPORT) require('node:fs').writeFileSync(process.env.FUZZ_REPORT, JSON.stringify(report, null, 2));
  });

  it('no reader hangs', () => {
    assert.equal(report.hang, undefined, `a reader ran over ${HANG_MS} ms on: ${report.hang}`);
  });

  it('every reader ran its hostile inputs and mutations', () => {
    if (!process.env.FUZZ_ONLY) assert.ok(report.summaries.length >= 16, `${report.summaries.length} readers`);
    for (const s of report.summaries) assert.ok(s.mutations >= PER_CASE && s.cases >= s.mutations, `${s.name}: ${s.cases} cases, ${s.mutations} mutations`);
  });

  it('every read succeeds or throws InputError, within the memory bound', () => {
    const lines = report.findings.map((f) => `${f.caseName} [${f.input}] ${f.outcome}: ${f.detail}`);
    assert.deepEqual(lines, []);
  });

  it('the mutations reach the parsers (most are refused, some survive)', () => {
    for (const s of report.summaries) {
      // A fuzzer whose every case is refused at the magic number tests nothing past it: several message kinds.
      assert.ok(Object.keys(s.messages).length >= s.minMessages, `${s.name}: only ${Object.keys(s.messages).join(' | ')}`);
      assert.ok(s.outcomes.InputError > s.cases * s.refusedShare, `${s.name}: ${s.outcomes.InputError} InputErrors`);
    }
  });
});
