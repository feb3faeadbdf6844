/**
 * `backdoor-audit diff`: per layer the relative weight change, zeroed channels, BatchNorm statistics and
 * inserted modules, checked against edits whose answer is known by hand; and on the committed PyTorch victim
 * against CLP, whose outcome names the channels it zeroed: the diff must list exactly those.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import { BatchNorm2d, Conv2d, Linear } from '../../src/engine/nn/layers';
import { Rng } from '../../src/engine/util/rng';
import { clp } from '../../src/engine/defenses/clp';
import { diffModelFiles, diffModels, diffStateDicts, formatModelDiff } from '../../src/engine/model_files/diff';
import { loadModelFile, saveModelFile } from '../../src/engine/model_files/model_io';
import { isModelDiff } from '../../src/shared/model_diff';
import { runCell } from '../../src/engine/jobs/core';
import type { ImageSet } from '../../src/engine/data/dataset';

const ROOT = path.join(__dirname, '..', '..');
const VICTIM = path.join(ROOT, 'test', 'fixtures', 'zoo', 'preact8-badnets', 'victim.pt');

describe('model diff', () => {
  before(useWasm);

  it('measures hand-made edits: weights x1.5, a zeroed BN channel, running statistics, a zeroed head column, an inserted module', async () => {
    const start = tf.memory().numTensors;
    const a = buildModel({ arch: 'plain-cnn', inputShape: [6, 6, 1], numClasses: 3, options: { layers: [4] } });
    const bnA = a.root.find('features.1') as BatchNorm2d;
    tf.tidy(() => bnA.runningMean.assign(tf.tensor1d([3, 4, 0, 0])));
    const b = a.clone();
    const conv = b.root.find('features.0') as Conv2d;
    const bn = b.root.find('features.1') as BatchNorm2d;
    const head = b.root.find('classifier') as Linear;
    tf.tidy(() => {
      conv.weight.assign(tf.mul(conv.weight, 1.5));
      conv.bias!.assign(tf.mul(conv.bias!, 1.5));
      bn.weight.assign(tf.tensor1d([1, 0, 1, 1]));
      bn.runningMean.assign(tf.zeros([4]));
      bn.runningVar.assign(tf.fill([4], 2));
      // Linear weights are [in, out] inside: zero input feature 2 (FP's mask on the pooled feature).
      head.weight.assign(tf.mul(head.weight, tf.tensor2d([1, 1, 0, 1], [4, 1])));
    });
    b.insertBefore('classifier', () => new Linear(4, 4, new Rng(1)));

    const d = await diffModels(a, b);
    assert.ok(isModelDiff(d));
    const layer = (n: string) => d.layers.find((l) => l.name === n) ?? assert.fail(`no layer ${n}`);
    assert.equal(layer('features.0').kind, 'conv');
    assert.ok(Math.abs(layer('features.0').relChange! - 0.5) < 1e-5, `conv x1.5 moves by half: ${layer('features.0').relChange}`);
    assert.deepEqual(layer('features.0').zeroed, []);
    const l1 = layer('features.1');
    assert.equal(l1.kind, 'batchnorm');
    assert.deepEqual(l1.zeroed, [1]);
    // gamma (1,1,1,1) -> (1,0,1,1), beta 0: ||dW|| / ||W|| = 1 / 2.
    assert.equal(l1.relChange, 0.5);
    assert.deepEqual(l1.bnStats, { mean: 1, var: 1 });
    const h = layer('classifier');
    assert.equal(h.kind, 'linear');
    assert.deepEqual(h.zeroed, []);
    assert.deepEqual(h.zeroedInputs, [2]);
    assert.deepEqual(d.inserted.map((m) => [m.name, m.params]), [['classifier.inserted', 20]]);
    assert.deepEqual(d.removed, []);
    assert.equal(d.changedLayers, 3);
    assert.equal(d.zeroedChannels, 1);
    // Nothing changed: all zero.
    const same = await diffModels(a, a);
    assert.equal(same.relChange, 0);
    assert.equal(same.changedLayers, 0);
    assert.ok(same.layers.every((l) => l.relChange === 0 && l.zeroed.length === 0));
    a.dispose();
    b.dispose();
    assert.equal(tf.memory().numTensors, start, 'every tensor disposed');
  });

  it('a job row carries the diff of its purified model against the victim (CLP: its pruned channels)', async () => {
    const victim = buildModel({ arch: 'plain-cnn', inputShape: [6, 6, 1], numClasses: 2, options: { layers: [16] } });
    const conv = victim.root.find('features.0') as Conv2d;
    const w = new Float32Array(9 * 16);
    for (let k = 0; k < 16; k++) for (let i = 0; i < 9; i++) w[i * 16 + k] = (k === 5 ? 50 : 1) * (i === 4 ? 1 : 0.1);
    tf.tidy(() => conv.weight.assign(tf.tensor4d(w, [3, 3, 1, 16])));
    const rng = new Rng(3);
    const set = (n: number): ImageSet => ({ n, shape: [6, 6, 1], x: Float32Array.from({ length: n * 36 }, () => rng.next()), y: Int32Array.from({ length: n }, (_, i) => i % 2), numClasses: 2 });
    const test = set(8);
    const triggered = { set: set(4), attackLabels: new Int32Array(4) };
    const cell = { aux: { name: 'a', type: 'unseen', seed: 0, set: set(8) }, gic: false, defense: { id: 'clp', profile: 'paper' as const, params: { u: 3 } }, seed: 0, stream: 'cell:a:clp' };
    const out = await runCell({ victim, test, triggered, augment: { cropPadding: 0, flip: false }, seeds: [0] }, cell, cell.aux.set, { acc: 0.5, asr: 0.5, ra: 0.5 }, 0, undefined, () => undefined, []);
    assert.equal(out.row.error, null);
    assert.ok(isModelDiff(out.row.diff));
    assert.deepEqual(out.row.diff!.layers.filter((l) => l.zeroed.length).map((l) => [l.name, l.zeroed]), Object.entries(out.row.details!.pruned as object));
    assert.deepEqual(out.row.details!.pruned, { 'features.1': [5] });
    victim.dispose();
  });

  it('refuses two models of different architectures with one line', async () => {
    const a = buildModel({ arch: 'plain-cnn', inputShape: [6, 6, 1], numClasses: 3, options: { layers: [4] } });
    const b = buildModel({ arch: 'plain-cnn', inputShape: [6, 6, 1], numClasses: 3, options: { layers: [8] } });
    const [sdA, sdB] = [await a.stateDict(), await b.stateDict()];
    assert.throws(() => diffStateDicts(sdA, sdB), /features\.0\.weight is \[4, 1, 3, 3\] in one model and \[8, 1, 3, 3\] in the other/);
    // Another naming scheme (most weights renamed) is refused rather than listed as everything inserted and removed.
    const renamed = new Map([...sdA].map(([k, t]) => [k.startsWith('features') ? `keras_${k}` : k, t]));
    assert.throws(() => diffStateDicts(sdA, renamed), /name their parameters differently \(2 of 6 weights match by name; e\.g\. features\.0\.weight vs keras_features\.0\.weight\)/);
    a.dispose();
    b.dispose();
  });

  it('on the PyTorch victim and its CLP-purified model (safetensors, TensorFlow.js) lists exactly the channels CLP zeroed', async function () {
    this.timeout(600_000);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-diff-'));
    try {
      const victim = loadModelFile(VICTIM, 'victim.pt').model;
      // u = 1.5 with no aux data: a fixed threshold (the data-free CLP), low enough to prune in several layers.
      const out = await clp.run({ victim, aux: undefined as never, profile: 'paper', params: { u: 1.5, uMax: 3, uMin: 0, uStep: 0.25, accRatio: 0.9 }, augment: { cropPadding: 0, flip: false }, rng: new Rng(0), progress: () => undefined });
      const pruned = out.details!.pruned as Record<string, number[]>;
      assert.ok(Object.keys(pruned).length >= 2, `CLP pruned in ${Object.keys(pruned).length} layers`);
      const purified = await saveModelFile(out.model, path.join(dir, 'clp.safetensors'), 'safetensors');
      // The same purified model as a TensorFlow.js model (its layers named layer1_0_bn1, not layer1.0.bn1).
      const tfjsFile = await saveModelFile(out.model, path.join(dir, 'model.json'), 'tfjs');
      out.model.dispose();
      victim.dispose();
      const before = fs.readFileSync(VICTIM);

      const d = await diffModelFiles(VICTIM, purified);
      const listed = Object.fromEntries(d.layers.filter((l) => l.zeroed.length).map((l) => [l.name, l.zeroed]));
      assert.deepEqual(listed, pruned);
      assert.equal(d.zeroedChannels, out.details!.prunedChannels);
      // CLP changes nothing else: only the pruned BatchNorms moved, their statistics did not.
      for (const l of d.layers) {
        if (pruned[l.name]) assert.ok(l.relChange! > 0, l.name);
        else assert.equal(l.relChange, 0, `${l.name} unchanged`);
        if (l.bnStats) assert.deepEqual(l.bnStats, { mean: 0, var: 0 });
      }
      assert.equal(d.changedLayers, Object.keys(pruned).length);
      assert.deepEqual(d.inserted, []);
      assert.equal(d.a.format, 'pt');
      assert.equal(d.b.format, 'safetensors');
      const t = await diffModelFiles(VICTIM, tfjsFile);
      assert.equal(t.b.format, 'tfjs');
      assert.deepEqual(Object.fromEntries(t.layers.filter((l) => l.zeroed.length).map((l) => [l.name, l.zeroed])), pruned);
      assert.deepEqual([t.inserted, t.removed], [[], []]);
      const text = formatModelDiff(d);
      const first = Object.keys(pruned)[0];
      assert.match(text, new RegExp(`^${first.replace(/\./g, '\\.')}\\s+batchnorm.*\\s${pruned[first].slice(0, 12).join(', ')}`, 'm'));

      // The CLI prints the same as JSON, and leaves its inputs alone.
      const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'cli.ts'), 'diff', VICTIM, purified, '--json'], { encoding: 'utf8', cwd: ROOT, timeout: 300_000 });
      assert.equal(r.status, 0, r.stderr);
      const json = JSON.parse(r.stdout);
      assert.deepEqual(Object.fromEntries(json.layers.filter((l: { zeroed: number[] }) => l.zeroed.length).map((l: { name: string; zeroed: number[] }) => [l.name, l.zeroed])), pruned);
      assert.ok(fs.readFileSync(VICTIM).equals(before));
      const bad = spawnSync(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'cli.ts'), 'diff', VICTIM, path.join(dir, 'missing.pt')], { encoding: 'utf8', cwd: ROOT, timeout: 300_000 });
      assert.equal(bad.status, 2);
      assert.match(bad.stderr, /^error: .*missing\.pt/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
