import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { onnx } from 'onnx-proto';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import { exportOnnx } from '../../src/engine/model_files/onnx_export';
import * as path from 'node:path';
import { BatchNorm2d, Conv2d, Sequential } from '../../src/engine/nn/layers';
import { loadModelFile } from '../../src/engine/model_files/model_io';
import { FIXTURES, maxAbsDiff, parityCases, parityData } from '../helpers/parity';
import type { Model } from '../../src/engine/nn/model';
import { Rng } from '../../src/engine/util/rng';

function opCounts(m: onnx.ModelProto): Record<string, number> {
  const ops: Record<string, number> = {};
  for (const n of m.graph!.node!) ops[n.opType!] = (ops[n.opType!] ?? 0) + 1;
  return ops;
}

function floats(t: onnx.ITensorProto): Float32Array {
  const raw = t.rawData!;
  return new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
}

describe('ONNX writer', () => {
  before(useWasm);

  it('writes PreAct-ResNet18 as PyTorch exports it: ops, state_dict-named initializers with exact values, NCHW input', async () => {
    const model = buildModel({ arch: 'preact-resnet18', inputShape: [32, 32, 3], numClasses: 10, options: { width: 4 } }, undefined, 3);
    const before = tf.memory().numTensors;
    const bytes = await exportOnnx(model);
    assert.equal(tf.memory().numTensors, before, 'no tensor leaked');
    const m = onnx.ModelProto.decode(bytes);
    assert.deepEqual(opCounts(m), { Conv: 20, BatchNormalization: 16, Relu: 16, Add: 8, GlobalAveragePool: 1, Flatten: 1, Gemm: 1 });
    assert.equal(m.graph!.input![0].name, 'input');
    assert.deepEqual(m.graph!.input![0].type!.tensorType!.shape!.dim!.map((d) => d.dimParam || Number(d.dimValue)), ['N', 3, 32, 32]);
    assert.equal(m.graph!.output![0].name, 'logits');
    const sd = await model.stateDict();
    const inits = new Map(m.graph!.initializer!.map((t) => [t.name!, t]));
    for (const [k, t] of sd) {
      if (k.endsWith('num_batches_tracked')) continue;
      const init = inits.get(k);
      assert.ok(init, `initializer ${k}`);
      assert.deepEqual(init.dims!.map(Number), t.shape, k);
      assert.deepEqual(floats(init), t.data, k);
    }
    // Every node input is the graph input, an initializer or an earlier node's output.
    const known = new Set(['input', ...inits.keys()]);
    for (const n of m.graph!.node!) {
      for (const i of n.input!) assert.ok(known.has(i), `${n.name} reads ${i} before it exists`);
      for (const o of n.output!) known.add(o);
    }
    assert.ok(known.has('logits'));
    model.dispose();
  });

  it('adds an inserted module (a 1x1 conv + BN in front of a conv) as nodes in front of that conv', async () => {
    const model = buildModel({ arch: 'preact-resnet18', inputShape: [32, 32, 3], numClasses: 10, options: { width: 4 } }, undefined, 3);
    model.insertBefore('layer4.1.conv1', () => {
      const s = new Sequential([new Conv2d(32, 32, 1, { bias: true }, new Rng(1))]);
      return s;
    });
    const m = onnx.ModelProto.decode(await exportOnnx(model));
    assert.equal(opCounts(m).Conv, 21);
    const nodes = m.graph!.node!;
    const ins = nodes.findIndex((n) => n.input!.includes('layer4.1.conv1.inserted.0.weight'));
    const target = nodes.findIndex((n) => n.input!.includes('layer4.1.conv1.weight'));
    assert.ok(ins >= 0 && target > ins);
    assert.equal(nodes[target].input![0], nodes[ins].output![0], 'the inserted conv feeds the conv it precedes');
    model.dispose();
  });

  it('bakes normalization in on request and writes the adaptive pool of VGG with PyTorch bins', async () => {
    const model = buildModel({ arch: 'vgg7-bn', inputShape: [28, 28, 3], numClasses: 5, options: { cfg: [4, 'M', 8, 'M', 8, 'M'], avgpool: 7, hidden: [6, 6], dropout: true } }, { mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3] });
    const m = onnx.ModelProto.decode(await exportOnnx(model, { includeNormalization: true }));
    const ops = opCounts(m);
    assert.equal(ops.Sub, 1);
    assert.equal(ops.Div, 1);
    // 3x3 -> 7x7: 49 bins, each a Slice and a ReduceMean, 7 row concats and one column concat.
    assert.equal(ops.Slice, 49);
    assert.equal(ops.ReduceMean, 49);
    assert.equal(ops.Concat, 8);
    assert.equal(ops.Gemm, 3);
    const mean = m.graph!.initializer!.find((t) => t.name === 'normalize.mean')!;
    assert.deepEqual(Array.from(floats(mean)).map((v) => +v.toFixed(6)), [0.5, 0.4, 0.3]);
    model.dispose();
  });

  it('ONNX Runtime runs what we write for every parity checkpoint (and an inserted module) and agrees with our logits', async function () {
    let ort: typeof import('onnxruntime-node');
    try {
      ort = require('onnxruntime-node');
    } catch {
      console.log('      (skipped: onnxruntime-node is not installed)');
      return this.skip();
    }
    const check = async (label: string, model: Model, x: tf.Tensor4D) => {
      const session = await ort.InferenceSession.create(await exportOnnx(model));
      const nchw = tf.tidy(() => tf.transpose(x, [0, 3, 1, 2]));
      const out = await session.run({ [session.inputNames[0]]: new ort.Tensor('float32', nchw.dataSync() as Float32Array, nchw.shape) });
      nchw.dispose();
      const ours = tf.tidy(() => model.forward(x).dataSync() as Float32Array);
      const d = maxAbsDiff(out[session.outputNames[0]].data as Float32Array, ours);
      assert.ok(d.scale > 0.05 && d.diff <= 1e-5 * Math.max(1, d.scale), `${label}: ORT diff ${d.diff} (scale ${d.scale})`);
    };
    for (const c of parityCases()) {
      for (const [fmt, f] of Object.entries(c.files)) {
        const { x } = parityData(c.name);
        const { model } = loadModelFile({ path: path.join(FIXTURES, f!), inputShape: [x.shape[1], x.shape[2], x.shape[3]] }, 'test');
        if (c.name === 'preact_w4_c1' && fmt === 'pt') {
          model.insertBefore('layer4.1.conv1', () => new Sequential([new Conv2d(32, 32, 1, { bias: true }, new Rng(1)), new BatchNorm2d(32, 1e-3)]));
        }
        await check(`${c.name}.${fmt}`, model, x);
        x.dispose();
        model.dispose();
      }
    }
  });
});
