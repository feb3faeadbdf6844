import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { onnx } from 'onnx-proto';
import { useWasm } from '../helpers/backend';
import { FIXTURES, maxAbsDiff, parityCases, parityData } from '../helpers/parity';
import { loadModelFile, saveModelFile } from '../../src/engine/model_files/model_io';
import { exportOnnx } from '../../src/engine/model_files/onnx_export';
import { decodeOnnx } from '../../src/engine/formats/onnx';
import { buildModel } from '../../src/engine/models';
import { Conv2d, Sequential, BatchNorm2d } from '../../src/engine/nn/layers';
import { Rng } from '../../src/engine/util/rng';
import type { Model } from '../../src/engine/nn/model';
import { tempDir } from '../helpers/temp';

function logitsOf(model: Model, x: tf.Tensor4D): Float32Array {
  return tf.tidy(() => model.forward(x).dataSync() as Float32Array);
}

describe('ONNX reader', () => {
  before(useWasm);

  for (const c of parityCases()) {
    const file = c.files.onnx;
    if (!file) continue;
    it(`${c.name}.onnx (torch.onnx.export) gives PyTorch's outputs; written back and re-read, the same`, async () => {
      const before = tf.memory().numTensors;
      const { model, info } = loadModelFile(path.join(FIXTURES, file), 'test');
      const { x, logits, shape } = parityData(c.name);
      const dir = tempDir('ba-onnx-');
      try {
        assert.equal(info.format, 'onnx');
        assert.equal(info.numClasses, c.numClasses);
        assert.deepEqual(info.inputShape, [x.shape[1], x.shape[2], x.shape[3]]);
        const y = logitsOf(model, x);
        assert.equal(y.length, shape[0] * shape[1]);
        const { diff, scale } = maxAbsDiff(y, logits);
        assert.ok(scale > 0.1, 'outputs are not trivially small');
        assert.ok(diff <= 1e-4 * Math.max(1, scale), `max abs diff ${diff} (scale ${scale})`);
        // Round trip through our writer: same outputs, same weights.
        const out = await saveModelFile(model, path.join(dir, 'back.onnx'), 'onnx');
        const { model: back } = loadModelFile(out, 'test');
        const y2 = logitsOf(back, x);
        assert.ok(maxAbsDiff(y2, y).diff <= 1e-6, 'the written graph computes the same');
        const a = await model.stateDict();
        const b = await back.stateDict();
        assert.deepEqual([...b.keys()], [...a.keys()]);
        for (const [k, t] of a) assert.deepEqual(b.get(k)!.data, t.data, k);
        back.dispose();
      } finally {
        x.dispose();
        model.dispose();
      }
      assert.equal(tf.memory().numTensors, before, 'no tensor leaked');
    });
  }

  it('keeps PyTorch state_dict names for layers the export did not fold', async () => {
    const { model } = loadModelFile(path.join(FIXTURES, 'parity_preact_w4_c1.onnx'), 'test');
    const keys = [...(await model.stateDict()).keys()];
    assert.ok(keys.includes('conv1.weight'));
    assert.ok(keys.includes('linear.weight') && keys.includes('linear.bias'));
    assert.equal(model.layout.head, 'linear');
    // NAD's taps: the ends of the last two resolution stages (the residual sums ending layer3 and layer4).
    assert.deepEqual(model.layout.stages, ['layer3.layer3.1.Add', 'layer4.layer4.1.Add', 'Flatten']);
    assert.ok(model.head().weight.shape[1] === 10);
    // Defenses work on clones: same structure, same weights, same outputs.
    const copy = model.clone();
    const x = tf.randomUniform([2, 28, 28, 1], -1, 1, 'float32', 5) as tf.Tensor4D;
    assert.equal(maxAbsDiff(logitsOf(copy, x), logitsOf(model, x)).diff, 0);
    assert.equal(copy.paramCount(), model.paramCount());
    assert.equal(copy.batchNorms().length, 8);
    const feats = tf.tidy(() => copy.forwardWithFeatures(x).features.shape);
    assert.deepEqual(feats, [2, 32], 'the penultimate feature is the pooled, flattened map');
    x.dispose();
    copy.dispose();
    // Its weights as safetensors carry no architecture (the graph is not in them): reading goes through
    // detection, which the folded convolutions defeat, so the error points back to the graph file.
    const dir = tempDir('ba-onnx-');
    const st = await saveModelFile(model, path.join(dir, 'w.safetensors'), 'safetensors');
    assert.throws(() => loadModelFile(st, 'job'), /no known architecture matches this state_dict .*ONNX/);
    model.dispose();
  });

  it('our own models written to ONNX and read back compute the same, an inserted module included', async () => {
    const x = tf.randomUniform([2, 32, 32, 3], 0, 1, 'float32', 4) as tf.Tensor4D;
    for (const spec of [
      { arch: 'preact-resnet18', inputShape: [32, 32, 3] as [number, number, number], numClasses: 10, options: { width: 4 } },
      { arch: 'resnet18', inputShape: [32, 32, 3] as [number, number, number], numClasses: 10, options: { width: 4 } },
      { arch: 'vgg7-bn', inputShape: [32, 32, 3] as [number, number, number], numClasses: 5, options: { cfg: [4, 'M', 8, 'M', 8, 'M'], avgpool: 7, hidden: [6, 6], dropout: true } },
    ]) {
      const model = buildModel(spec, { mean: [0.5, 0.5, 0.4], std: [0.25, 0.2, 0.3] }, 7);
      // Non-trivial BN statistics so that BN export errors would show.
      for (const bn of model.batchNorms()) {
        tf.tidy(() => {
          bn.runningMean.assign(tf.randomNormal(bn.runningMean.shape, 0, 0.3, 'float32', 1));
          bn.runningVar.assign(tf.randomUniform(bn.runningVar.shape, 0.5, 1.5, 'float32', 2));
        });
      }
      if (spec.arch === 'preact-resnet18') {
        model.insertBefore('layer4.1.conv1', () => new Sequential([new Conv2d(32, 32, 1, { bias: true }, new Rng(3)), new BatchNorm2d(32)]));
      }
      const dir = tempDir('ba-onnx-');
      const file = await saveModelFile(model, path.join(dir, 'm.onnx'), 'onnx');
      const { model: back } = loadModelFile(file, 'test');
      assert.deepEqual(back.normalize, model.normalize, 'normalization travels in the metadata');
      const d = maxAbsDiff(logitsOf(back, x), logitsOf(model, x));
      assert.ok(d.diff <= 1e-5 * Math.max(1, d.scale), `${spec.arch}: diff ${d.diff}`);
      model.dispose();
      back.dispose();
    }
    x.dispose();
  });

  it('an unsupported op is refused by name and node; broken files are one-line input errors', () => {
    const m = onnx.ModelProto.decode(fs.readFileSync(path.join(FIXTURES, 'parity_plain_bn.onnx')));
    m.graph!.node![2].opType = 'LpPool';
    const name = m.graph!.node![2].name;
    const dir = tempDir('ba-onnx-');
    const bad = path.join(dir, 'bad.onnx');
    fs.writeFileSync(bad, onnx.ModelProto.encode(m).finish());
    assert.throws(() => loadModelFile(bad, 'job'), (e: Error & { exitCode?: number }) => e.exitCode === 2 && e.message.includes(`unsupported ONNX op LpPool (node "${name}")`));
    const good = fs.readFileSync(path.join(FIXTURES, 'parity_plain_bn.onnx'));
    assert.throws(() => decodeOnnx(good.subarray(0, good.length >> 1), 'x'), (e: Error & { exitCode?: number }) => e.exitCode === 2 && /^not a valid ONNX file/.test(e.message) && !e.message.includes('\n'));
    const rnd = new Uint8Array(4096).map((_, i) => (i * 2654435761) >>> 24);
    assert.throws(() => decodeOnnx(rnd, 'x'), (e: Error & { exitCode?: number }) => e.exitCode === 2 && !e.message.includes('\n'));
    // A tensor whose bytes do not match its shape is refused before anything is copied.
    const lie = onnx.ModelProto.decode(good);
    lie.graph!.initializer![0].dims = [1000000, 1000];
    fs.writeFileSync(bad, onnx.ModelProto.encode(lie).finish());
    assert.throws(() => loadModelFile(bad, 'job'), /holds \d+ bytes but its shape \[1000000,1000\] needs 4000000000/);
  });
});
