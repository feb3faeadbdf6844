import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { useWasm } from '../helpers/backend';
import { maxAbsDiff } from '../helpers/parity';
import { loadModelFile, saveModelFile } from '../../src/engine/model_files/model_io';
import { BatchNorm2d, Conv2d, Sequential } from '../../src/engine/nn/layers';
import { Rng } from '../../src/engine/util/rng';
import type { Model } from '../../src/engine/nn/model';
import { buildModel } from '../../src/engine/models';
import { tempDir } from '../helpers/temp';

/** Save a tfjs-layers model as model.json + shards (split in two) the way the converter lays them out. */
async function saveLayers(m: tfl.LayersModel, dir: string): Promise<string> {
  await m.save({
    save: async (a: tf.io.ModelArtifacts) => {
      const bytes = new Uint8Array(a.weightData as ArrayBuffer);
      const half = Math.floor(bytes.length / 2);
      fs.writeFileSync(path.join(dir, 'group1-shard1of2.bin'), bytes.subarray(0, half));
      fs.writeFileSync(path.join(dir, 'group1-shard2of2.bin'), bytes.subarray(half));
      const json = { format: 'layers-model', generatedBy: 'tfjs-layers', convertedBy: null, modelTopology: a.modelTopology, weightsManifest: [{ paths: ['group1-shard1of2.bin', 'group1-shard2of2.bin'], weights: a.weightSpecs }] };
      fs.writeFileSync(path.join(dir, 'model.json'), JSON.stringify(json));
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    },
  });
  return path.join(dir, 'model.json');
}

/** Load model.json + shards with tfjs-layers itself (the format's reference reader). */
async function loadLayers(file: string): Promise<tfl.LayersModel> {
  const json = JSON.parse(fs.readFileSync(file, 'utf8'));
  const group = json.weightsManifest[0];
  const data = Buffer.concat(group.paths.map((p: string) => fs.readFileSync(path.join(path.dirname(file), p))));
  return tfl.loadLayersModel(tf.io.fromMemory({ modelTopology: json.modelTopology, weightSpecs: group.weights, weightData: data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) }));
}

/** Random weights everywhere, BN statistics included, so that every layout mistake shows. */
function randomize(m: tfl.LayersModel, seed: number): void {
  tf.tidy(() => m.setWeights(m.weights.map((w, i) => (w.name.includes('moving_variance') || w.name.includes('gamma') ? tf.randomUniform(w.shape as number[], 0.5, 1.5, 'float32', seed + i) : tf.randomNormal(w.shape as number[], 0, 0.3, 'float32', seed + i)))));
}

function sequentialNet(): tfl.Sequential {
  const m = tfl.sequential();
  m.add(tfl.layers.conv2d({ inputShape: [16, 16, 3], filters: 8, kernelSize: 3, padding: 'same', activation: 'relu', name: 'c1' }));
  m.add(tfl.layers.batchNormalization({ name: 'bn1' }));
  m.add(tfl.layers.maxPooling2d({ poolSize: 2, name: 'p1' }));
  m.add(tfl.layers.conv2d({ filters: 8, kernelSize: 3, strides: 2, padding: 'same', name: 'c2' }));
  m.add(tfl.layers.reLU({ name: 'r2' }));
  m.add(tfl.layers.averagePooling2d({ poolSize: 3, strides: 1, padding: 'same', name: 'p2' }));
  m.add(tfl.layers.flatten({ name: 'flat' }));
  m.add(tfl.layers.dropout({ rate: 0.3, name: 'drop' }));
  m.add(tfl.layers.dense({ units: 16, activation: 'relu', name: 'd1' }));
  m.add(tfl.layers.dense({ units: 5, name: 'd2' }));
  return m;
}

function functionalNet(): tfl.LayersModel {
  const input = tfl.input({ shape: [12, 12, 2], name: 'img' });
  const a = tfl.layers.conv2d({ filters: 6, kernelSize: 3, padding: 'same', name: 'stem' }).apply(input) as tfl.SymbolicTensor;
  const b = tfl.layers.batchNormalization({ name: 'stem_bn', epsilon: 1e-3 }).apply(a) as tfl.SymbolicTensor;
  const r = tfl.layers.activation({ activation: 'relu', name: 'stem_relu' }).apply(b) as tfl.SymbolicTensor;
  const p = tfl.layers.zeroPadding2d({ padding: 1, name: 'pad' }).apply(r) as tfl.SymbolicTensor;
  const c = tfl.layers.conv2d({ filters: 6, kernelSize: 3, name: 'body' }).apply(p) as tfl.SymbolicTensor;
  const s = tfl.layers.add({ name: 'res' }).apply([c, r]) as tfl.SymbolicTensor;
  const side = tfl.layers.conv2d({ filters: 3, kernelSize: 1, useBias: false, name: 'side' }).apply(r) as tfl.SymbolicTensor;
  const cat = tfl.layers.concatenate({ name: 'cat' }).apply([s, side]) as tfl.SymbolicTensor;
  const g = tfl.layers.globalAveragePooling2d({ name: 'gap' }).apply(cat) as tfl.SymbolicTensor;
  const out = tfl.layers.dense({ units: 4, activation: 'softmax', name: 'head' }).apply(g) as tfl.SymbolicTensor;
  return tfl.model({ inputs: input, outputs: out });
}

const ours = (m: Model, x: tf.Tensor4D) => tf.tidy(() => m.forward(x).dataSync() as Float32Array);
const theirs = (m: tfl.LayersModel, x: tf.Tensor4D) => tf.tidy(() => (m.predict(x) as tf.Tensor).dataSync() as Float32Array);

describe('TensorFlow.js layers models (model.json + shards)', () => {
  before(useWasm);

  for (const [label, make] of [['Sequential', sequentialNet], ['functional', functionalNet]] as const) {
    it(`${label}: our import computes what tfjs-layers computes; written back, tfjs-layers reads it and agrees`, async () => {
      const dir = tempDir('ba-tfjs-');
      const ref = make();
      randomize(ref, 3);
      const file = await saveLayers(ref, dir);
      const shape = ref.inputs[0].shape.slice(1) as number[];
      const x = tf.randomNormal([3, shape[0], shape[1], shape[2]], 0, 1, 'float32', 9) as tf.Tensor4D;
      const { model, info } = loadModelFile(file, 'test');
      assert.equal(info.format, 'tfjs');
      assert.deepEqual(info.inputShape, shape);
      const want = theirs(ref, x);
      const got = ours(model, x);
      const d = maxAbsDiff(got, want);
      assert.ok(d.scale > 0.1 && d.diff <= 1e-4 * Math.max(1, d.scale), `import: diff ${d.diff} (scale ${d.scale})`);
      assert.equal(info.params, ref.countParams() - ref.weights.filter((w) => w.name.includes('moving')).reduce((s, w) => s + w.shape.reduce((a, b) => a! * b!, 1)!, 0));

      // Change the weights as a defense would, write, and let tfjs-layers read the result.
      tf.tidy(() => model.head().weight.assign(tf.mul(model.head().weight, 0.5)));
      const out = await saveModelFile(model, path.join(dir, 'purified.json'), 'tfjs');
      assert.ok(fs.existsSync(path.join(dir, 'purified.weights.bin')));
      const back = await loadLayers(out);
      const d2 = maxAbsDiff(theirs(back, x), ours(model, x));
      assert.ok(d2.diff <= 1e-5 * Math.max(1, d2.scale), `written back: diff ${d2.diff}`);
      assert.ok(maxAbsDiff(ours(model, x), want).diff > 1e-3, 'the change is in the written model');
      // Read, write, read: the weights come back bit for bit.
      const { model: again } = loadModelFile(out, 'test');
      const a = await model.stateDict();
      const b2 = await again.stateDict();
      assert.deepEqual([...b2.keys()], [...a.keys()]);
      for (const [k, t] of a) assert.deepEqual(b2.get(k)!.data, t.data, k);
      again.dispose();
      back.dispose();
      ref.dispose();
      model.dispose();
      x.dispose();
    });
  }

  it('an inserted module (1x1 conv + BN) is written as layers in front of its target that tfjs-layers runs identically', async () => {
    for (const make of [sequentialNet, functionalNet]) {
      const dir = tempDir('ba-tfjs-');
      const ref = make();
      randomize(ref, 5);
      const { model } = loadModelFile(await saveLayers(ref, dir), 'test');
      const target = model.layout.lastBlockConv;
      const ch = (model.root.find(target) as Conv2d).inChannels;
      model.insertBefore(target, () => {
        const conv = new Conv2d(ch, ch, 1, { bias: true }, new Rng(2));
        const bn = new BatchNorm2d(ch);
        tf.tidy(() => bn.runningMean.assign(tf.randomNormal([ch], 0, 0.5, 'float32', 4)));
        return new Sequential([conv, bn]);
      });
      const [h, w, c] = ref.inputs[0].shape.slice(1) as number[];
      const x = tf.randomNormal([2, h, w, c], 0, 1, 'float32', 1) as tf.Tensor4D;
      const back = await loadLayers(await saveModelFile(model, path.join(dir, 'npd.json'), 'tfjs'));
      assert.equal(back.layers.length, ref.layers.length + 2);
      const d = maxAbsDiff(theirs(back, x), ours(model, x));
      assert.ok(d.diff <= 1e-5 * Math.max(1, d.scale), `diff ${d.diff}`);
      assert.ok(maxAbsDiff(ours(model, x), theirs(ref, x)).diff > 1e-4, 'the insertion changes the outputs');
      back.dispose();
      ref.dispose();
      model.dispose();
      x.dispose();
    }
  });

  it('refuses shards outside the folder, short shards and unknown layers, each with a one-line input error', async () => {
    const dir = tempDir('ba-tfjs-');
    const ref = sequentialNet();
    const file = await saveLayers(ref, dir);
    ref.dispose();
    const json = JSON.parse(fs.readFileSync(file, 'utf8'));
    const variant = (name: string, edit: (j: typeof json) => void) => {
      const j = JSON.parse(JSON.stringify(json));
      edit(j);
      const f = path.join(dir, name);
      fs.writeFileSync(f, JSON.stringify(j));
      return f;
    };
    const oneLine = (re: RegExp) => (e: Error & { exitCode?: number }) => e.exitCode === 2 && re.test(e.message) && !e.message.includes('\n');
    assert.throws(() => loadModelFile(variant('escape.json', (j) => (j.weightsManifest[0].paths[0] = '../../etc/passwd')), 't'), oneLine(/outside the model's folder/));
    assert.throws(() => loadModelFile(variant('short.json', (j) => j.weightsManifest[0].paths.pop()), 't'), oneLine(/hold \d+ bytes but the manifest needs \d+/));
    assert.throws(
      () => loadModelFile(variant('lstm.json', (j) => (j.modelTopology.config.layers[3].class_name = 'LSTM')), 't'),
      oneLine(/unsupported TensorFlow.js layer LSTM \(layer "c2"\)/),
    );
    assert.throws(() => loadModelFile(variant('graph.json', (j) => (j.modelTopology = { node: [] })), 't'), oneLine(/graph models .* not supported/));
  });

  it('PyTorch-layout models written as TensorFlow.js: tfjs-layers and our reader both compute the source logits', async () => {
    const dir = tempDir('ba-tfjs-');
    const cases: Array<[string, Parameters<typeof buildModel>[0]]> = [
      ['preact', { arch: 'preact-resnet18', inputShape: [20, 20, 1], numClasses: 6, options: { width: 4 } }],
      ['resnet-cifar', { arch: 'resnet18', inputShape: [16, 16, 3], numClasses: 5, options: { width: 4, stem: 'cifar', shortcut: 'shortcut', head: 'linear' } }],
      ['vgg-flat', { arch: 'vgg7-bn', inputShape: [16, 16, 3], numClasses: 4, options: { cfg: [4, 'M', 8, 'M'], avgpool: 0, hidden: [6], dropout: true } }],
      ['vgg-pool', { arch: 'vgg7-bn', inputShape: [8, 8, 3], numClasses: 4, options: { cfg: [4, 'M', 8, 'M', 8, 'M'], avgpool: 7, hidden: [6], dropout: false } }],
    ];
    for (const [label, spec] of cases) {
      const model = buildModel(spec, { mean: [0.4], std: [0.3] }, 2);
      for (const bn of model.batchNorms()) {
        tf.tidy(() => {
          bn.runningMean.assign(tf.randomNormal(bn.runningMean.shape, 0, 0.3, 'float32', 1));
          bn.runningVar.assign(tf.randomUniform(bn.runningVar.shape, 0.5, 1.5, 'float32', 2));
        });
      }
      const [h, w, c] = spec.inputShape;
      const x = tf.randomUniform([2, h, w, c], 0, 1, 'float32', 6) as tf.Tensor4D;
      const file = await saveModelFile(model, path.join(dir, `${label}.json`), 'tfjs');
      const keras = await loadLayers(file);
      // The file takes normalized input, like the source model's first layer.
      const xn = tf.tidy(() => tf.div(tf.sub(x, 0.4), 0.3)) as tf.Tensor4D;
      const want = ours(model, x);
      const d = maxAbsDiff(theirs(keras, xn), want);
      assert.ok(d.scale > 0.01 && d.diff <= 1e-4 * Math.max(1, d.scale), `${label}: tfjs-layers diff ${d.diff} (scale ${d.scale})`);
      const { model: back, info } = loadModelFile(file, 'test');
      assert.deepEqual(back.normalize, model.normalize, `${label}: normalization travels in userDefinedMetadata`);
      assert.equal(info.params, model.paramCount(), label);
      const d2 = maxAbsDiff(ours(back, x), want);
      assert.ok(d2.diff <= 1e-5 * Math.max(1, d2.scale), `${label}: re-read diff ${d2.diff}`);
      keras.dispose();
      back.dispose();
      model.dispose();
      tf.dispose([x, xn]);
    }
    const stem = buildModel({ arch: 'resnet18', inputShape: [32, 32, 3], numClasses: 5, options: { width: 4 } });
    await assert.rejects(() => saveModelFile(stem, path.join(dir, 'stem.json'), 'tfjs'), /max pooling with padding \(maxpool\) has no TensorFlow.js layer/);
    stem.dispose();
  });
});
