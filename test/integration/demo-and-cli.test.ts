/**
 * End to end on the embedded MNIST: the quick demo's numbers (the victim is backdoored, fine-tuning on the
 * unseen auxiliary set removes the backdoor), no tensor left behind, and the CLI's handling of bad jobs.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { runDemo } from '../../src/engine/jobs/demo';
import type { Results } from '../../src/shared/results';
import { useWasm } from '../helpers/backend';
import { tempDir } from '../helpers/temp';

const CLI = path.join(__dirname, '..', '..', 'dist', 'cli.js');

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 600_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('demo on the embedded MNIST (ft and clp)', function () {
  this.timeout(900_000);
  let out: string;
  let results: Results;
  let tensorsBefore: number;

  before(async () => {
    await useWasm();
    out = tempDir('ba-demo-');
    tensorsBefore = tf.memory().numTensors;
    results = await runDemo({ quick: true, outDir: out, device: 'cpu', defenses: ['ft', 'clp'] });
  });

  it('trains a backdoored victim (ACC >= 0.95, ASR >= 0.95)', () => {
    assert.ok(results.baseline.acc >= 0.95, `ACC ${results.baseline.acc}`);
    assert.ok(results.baseline.asr! >= 0.95, `ASR ${results.baseline.asr}`);
  });

  it('ft on the unseen auxiliary set brings ASR to <= 0.10 and costs at most 0.03 ACC', () => {
    const row = results.rows.find((r) => r.aux === 'unseen' && r.defense === 'ft' && !r.gic)!;
    assert.equal(row.error, null);
    assert.ok(row.asr! <= 0.1, `ASR ${row.asr}`);
    assert.ok(results.baseline.acc - row.acc! <= 0.03, `ACC ${results.baseline.acc} -> ${row.acc}`);
    assert.ok(row.der! > 0.9, `DER ${row.der}`);
  });

  it('runs every aux set with and without GIC, and reports calibration and embeddings', () => {
    assert.deepEqual([...new Set(results.rows.map((r) => r.aux))], ['seen', 'unseen', 'ood-brightness', 'ood-noise', 'synthetic']);
    assert.equal(results.rows.length, 5 * 2 * 2);
    assert.equal(results.gic.length, 5);
    for (const g of results.gic) assert.ok(g.maxPerturbation <= g.delta, `${g.aux}: ${g.maxPerturbation} > ${g.delta}`);
    const ood = results.gic.find((g) => g.aux === 'ood-noise')!;
    assert.ok(ood.bnDistanceAfter! < ood.bnDistanceBefore!, 'GIC lowers the BN-statistics distance on an OOD set');
    assert.equal(results.embeddings.length, 5);
    assert.ok(results.embeddings[0].points.some((p) => p.set === 'calibrated'));
    // The gallery: one example per class (six), whose perturbation image reaches what the entry reports.
    for (const g of results.gic) {
      assert.equal(g.samples?.length, 6, g.aux);
      const largest = Math.max(...g.samples!.flatMap((s) => Array.from(Buffer.from(s.diff, 'base64')))) / 255;
      assert.ok(largest <= g.maxPerturbation / g.delta + 0.5 / 255 + 1e-6, `${g.aux}: gallery ${largest} vs max ${g.maxPerturbation / g.delta}`);
    }
  });

  it('writes results.json, the victim and the purified models, and leaves no tensor behind', () => {
    const onDisk = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8'));
    assert.equal(onDisk.schema, 'backdoor-audit/results@1');
    assert.ok(fs.existsSync(path.join(out, 'victim.safetensors')));
    for (const r of results.rows) if (r.output) assert.ok(fs.existsSync(path.join(out, r.output)), r.output);
    assert.equal(tf.memory().numTensors, tensorsBefore, 'tensor count back at its start value');
  });

  describe('CLI', () => {
    let jobDir: string;
    before(() => {
      jobDir = tempDir('ba-job-');
      fs.copyFileSync(path.join(out, 'victim.safetensors'), path.join(jobDir, 'victim.safetensors'));
    });
    const writeJob = (job: unknown) => {
      const f = path.join(jobDir, 'audit.json');
      fs.writeFileSync(f, JSON.stringify(job));
      return f;
    };
    const good = () => ({
      model: 'victim.safetensors',
      data: { train: { format: 'mnist-embedded' }, test: { format: 'mnist-embedded' } },
      attack: { type: 'badnets', target: 0 },
      aux: [{ name: 'heldout', type: 'unseen', source: { format: 'mnist-embedded' }, size: 300 }],
      defenses: ['clp'],
      embedding: { method: 'none' },
    });

    it('runs a job: baseline equals the demo victim, a results table on stdout, results.json in --out', () => {
      const outDir = path.join(jobDir, 'out');
      const r = cli(['run', writeJob(good()), '--out', outDir, '--device', 'cpu']);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /clp/);
      const res = JSON.parse(fs.readFileSync(path.join(outDir, 'results.json'), 'utf8')) as Results;
      assert.ok(Math.abs(res.baseline.asr! - results.baseline.asr!) < 1e-9);
      assert.equal(res.rows[0].defense, 'clp');
    });

    for (const [what, mutate, pattern] of [
      ['an unknown field', (j: Record<string, unknown>) => (j.fooBar = 1), /unknown field "fooBar"/],
      ['an unknown nested field', (j: Record<string, unknown>) => ((j.aux as Array<Record<string, unknown>>)[0].colour = 'red'), /unknown field "colour" \(audit\.json: aux\[0\]\.colour\)/],
      ['a missing file', (j: Record<string, unknown>) => (j.model = 'nope.safetensors'), /no such file: nope\.safetensors \(audit\.json: model\)/],
      ['an unknown defense', (j: Record<string, unknown>) => (j.defenses = ['magic']), /must be one of/],
    ] as const) {
      it(`exits 2 with one line on ${what}, writing nothing`, () => {
        const job = good() as unknown as Record<string, unknown>;
        mutate(job);
        const outDir = path.join(jobDir, `bad-${what.replace(/ /g, '-')}`);
        const r = cli(['run', writeJob(job), '--out', outDir]);
        assert.equal(r.status, 2, r.stderr);
        const lines = r.stderr.trim().split('\n');
        assert.equal(lines.length, 1, r.stderr);
        assert.match(lines[0], /^error: /);
        assert.match(lines[0], pattern);
        assert.ok(!fs.existsSync(outDir), 'nothing written');
      });
    }

    it('exits 2 when the images do not match the model input', () => {
      // 8x8 images in an IDX pair.
      const n = 4;
      const img = Buffer.alloc(16 + n * 64);
      img.writeUInt32BE(0x00000803, 0);
      img.writeUInt32BE(n, 4);
      img.writeUInt32BE(8, 8);
      img.writeUInt32BE(8, 12);
      const lab = Buffer.alloc(8 + n);
      lab.writeUInt32BE(0x00000801, 0);
      lab.writeUInt32BE(n, 4);
      fs.writeFileSync(path.join(jobDir, 'small-images-idx3-ubyte'), img);
      fs.writeFileSync(path.join(jobDir, 'small-labels-idx1-ubyte'), lab);
      const job = good() as unknown as Record<string, unknown>;
      job.data = { test: { path: 'small-images-idx3-ubyte', format: 'idx' } };
      const outDir = path.join(jobDir, 'bad-shape');
      const r = cli(['run', writeJob(job), '--out', outDir, '--device', 'cpu']);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr.trim(), /^error: images are 8x8 but the model takes 28x28; add "resize": true to the data source to resize them \(.*small-images-idx3-ubyte\)$/);
      assert.ok(!fs.existsSync(outDir));
    });

    it('inspect names the architecture and shape', () => {
      const r = cli(['inspect', path.join(jobDir, 'victim.safetensors'), '--json']);
      assert.equal(r.status, 0, r.stderr);
      const info = JSON.parse(r.stdout);
      assert.equal(info.arch, 'small-cnn');
      assert.deepEqual(info.inputShape, [28, 28, 1]);
    });
  });
});
