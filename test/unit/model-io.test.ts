import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import { loadModelFile, saveModelFile } from '../../src/engine/model_files/model_io';
import { tempDir } from '../helpers/temp';

describe('model files', () => {
  before(useWasm);

  it('a PreAct-ResNet18 .pt state_dict is recognized (width, channels, classes) and gives the same logits', async () => {
    const dir = tempDir('ba-mio-');
    const src = buildModel({ arch: 'preact-resnet18', inputShape: [32, 32, 1], numClasses: 7, options: { width: 8 } }, undefined, 5);
    const file = await saveModelFile(src, path.join(dir, 'victim.pt'), 'pt');
    const before = fs.readFileSync(file);
    const { model, info } = loadModelFile(file, 'test');
    assert.equal(info.arch, 'preact-resnet18');
    assert.deepEqual(info.inputShape, [32, 32, 1]);
    assert.equal(info.numClasses, 7);
    assert.equal(info.format, 'pt');
    const x = tf.randomUniform([2, 32, 32, 1], 0, 1, 'float32', 9) as tf.Tensor4D;
    const a = src.forward(x);
    const b = model.forward(x);
    assert.ok(tf.max(tf.abs(tf.sub(a, b))).dataSync()[0] < 1e-5);
    assert.ok(before.equals(fs.readFileSync(file)), 'the input file is unchanged');
    tf.dispose([x, a, b]);
    src.dispose();
    model.dispose();
  });

  it('a state_dict of no known architecture is refused with its first keys and a pointer to ONNX', async () => {
    const dir = tempDir('ba-mio-');
    const src = buildModel({ arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 });
    const file = await saveModelFile(src, path.join(dir, 'plain.pt'), 'pt');
    assert.throws(() => loadModelFile(file, 'audit.json: model'), /no known architecture.*features\.0\.weight.*ONNX/);
    const { model } = loadModelFile({ path: file, arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 }, 'x');
    model.dispose();
    src.dispose();
  });
});
