import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { useWasm } from '../helpers/backend';
import { FIXTURES } from '../helpers/parity';
import { inspectModelFile, formatInspect } from '../../src/engine/model_files/inspect';
import { loadModelFile, saveModelFile } from '../../src/engine/model_files/model_io';
import { runJobFile } from '../../src/engine/jobs/runner';
import { loadJob } from '../../src/engine/jobs/validate';
import { buildModel } from '../../src/engine/models';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { onnx } from 'onnx-proto';
import { tempDir } from '../helpers/temp';

const CLI = path.join(__dirname, '..', '..', 'dist', 'cli.js');

describe('inspect and evaluation-only jobs across model formats', () => {
  before(useWasm);

  it('inspect reports format, architecture, input shape, classes, parameters and layers for every format', async () => {
    const dir = tempDir('ba-insp-');
    // A TensorFlow.js model.json written by tfjs-layers itself.
    const keras = tfl.sequential({ layers: [tfl.layers.conv2d({ inputShape: [8, 8, 3], filters: 4, kernelSize: 3, activation: 'relu', name: 'c' }), tfl.layers.flatten({ name: 'f' }), tfl.layers.dense({ units: 3, name: 'd' })] });
    await keras.save({
      save: async (a: tf.io.ModelArtifacts) => {
        fs.writeFileSync(path.join(dir, 'w.bin'), new Uint8Array(a.weightData as ArrayBuffer));
        fs.writeFileSync(path.join(dir, 'model.json'), JSON.stringify({ format: 'layers-model', modelTopology: a.modelTopology, weightsManifest: [{ paths: ['w.bin'], weights: a.weightSpecs }] }));
        return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
      },
    });
    keras.dispose();
    const tfjsInfo = await inspectModelFile(path.join(dir, 'model.json'));
    assert.equal(tfjsInfo.format, 'tfjs');
    assert.deepEqual(tfjsInfo.inputShape, [8, 8, 3]);
    assert.equal(tfjsInfo.numClasses, 3);
    assert.equal(tfjsInfo.params, 3 * 3 * 3 * 4 + 4 + 6 * 6 * 4 * 3 + 3);
    assert.deepEqual(tfjsInfo.layers.map((l) => l.name), ['c', 'c_activation', 'f', 'd']);
    const cases: Array<[string, string, string, [number, number, number], number, boolean]> = [
      ['parity_preact_w4_c1.pt', 'pt', 'preact-resnet18', [32, 32, 1], 10, false],
      ['parity_resnet18_w4.safetensors', 'safetensors', 'resnet18', [224, 224, 3], 7, false],
      ['parity_vgg_bn_flat.pt', 'pt', 'vgg7-bn', [32, 32, 1], 10, true],
      ['parity_ops.onnx', 'onnx', 'onnx', [16, 16, 3], 5, true],
    ];
    for (const [file, format, arch, shape, k, known] of cases) {
      const info = await inspectModelFile(path.join(FIXTURES, file));
      assert.equal(info.format, format, file);
      assert.equal(info.arch, arch, file);
      assert.deepEqual(info.inputShape, shape, file);
      assert.equal(info.inputSizeKnown, known, file);
      assert.equal(info.numClasses, k, file);
      assert.equal(info.params, info.layers.reduce((s, l) => s + l.params, 0), `${file}: parameters add up over the layers`);
      assert.ok(info.tensors.length >= info.layers.filter((l) => l.params > 0).length);
      const text = formatInspect(info);
      assert.match(text, new RegExp(`format: +${format}`));
      assert.match(text, new RegExp(`classes: +${k}`));
    }
    const onnx = await inspectModelFile(path.join(FIXTURES, 'parity_ops.onnx'));
    assert.deepEqual(
      onnx.layers.map((l) => l.kind),
      ['Conv2d', 'ReLU', 'Conv2d', 'Conv2d', 'Concat', 'Conv2d', 'Add', 'ReLU', 'MaxPool2d', 'GlobalAveragePool', 'Reshape', 'Linear', 'Linear', 'Softmax'],
    );
    const vgg = await inspectModelFile(path.join(FIXTURES, 'parity_vgg_bn_flat.pt'));
    assert.deepEqual(vgg.layers.find((l) => l.name === 'features.0')!.shape, [8, 1, 3, 3]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a job with an empty defenses list only evaluates the model (baseline, no cells, no model written)', async () => {
    const dir = tempDir('ba-eval-');
    const n = 24;
    const img = Buffer.alloc(16 + n * 28 * 28);
    img.writeUInt32BE(0x00000803, 0);
    img.writeUInt32BE(n, 4);
    img.writeUInt32BE(28, 8);
    img.writeUInt32BE(28, 12);
    for (let i = 16; i < img.length; i++) img[i] = (i * 7919) % 251;
    const lab = Buffer.alloc(8 + n);
    lab.writeUInt32BE(0x00000801, 0);
    lab.writeUInt32BE(n, 4);
    for (let i = 0; i < n; i++) lab[8 + i] = i % 10;
    fs.writeFileSync(path.join(dir, 't-images-idx3-ubyte'), img);
    fs.writeFileSync(path.join(dir, 't-labels-idx1-ubyte'), lab);
    fs.copyFileSync(path.join(FIXTURES, 'parity_preact_w4_c1.onnx'), path.join(dir, 'victim.onnx'));
    const job = path.join(dir, 'audit.json');
    fs.writeFileSync(job, JSON.stringify({ model: 'victim.onnx', data: { test: { path: 't-images-idx3-ubyte', format: 'idx' } }, defenses: [] }));
    // TensorFlow.js output of an ONNX graph is refused when the job is read, by field.
    fs.writeFileSync(job, JSON.stringify({ model: 'victim.onnx', data: { test: { path: 't-images-idx3-ubyte', format: 'idx' } }, outputs: { formats: ['tfjs'] } }));
    assert.throws(() => loadJob(job), (e: Error & { where?: string }) => /cannot be written as TensorFlow.js/.test(e.message) && /outputs\.formats\[0\]/.test(e.where ?? ''));
    // A known trigger: without one the job audits an unknown backdoor (NC detection, reversed-trigger images).
    fs.writeFileSync(job, JSON.stringify({ model: 'victim.onnx', data: { test: { path: 't-images-idx3-ubyte', format: 'idx' } }, attack: { type: 'badnets', target: 0 }, defenses: [] }));
    const out = path.join(dir, 'out');
    const results = await runJobFile(job, { outDir: out, device: 'cpu' });
    assert.equal(results.model.format, 'onnx');
    assert.equal(results.rows.length, 0);
    assert.ok(results.baseline.acc >= 0 && results.baseline.acc <= 1);
    assert.deepEqual(fs.readdirSync(out).sort(), ['results.json']);

    // A .pt PreAct-ResNet18 pools globally: it takes the data's 28x28 rather than the nominal 32x32, and its
    // purified model is written in every format the job asks for.
    fs.copyFileSync(path.join(FIXTURES, 'parity_preact_w4_c1.pt'), path.join(dir, 'victim.pt'));
    // (A known trigger again: an unknown one would add NC's reversal of every class, a minute on this backend.)
    fs.writeFileSync(job, JSON.stringify({ model: 'victim.pt', data: { test: { path: 't-images-idx3-ubyte', format: 'idx' } }, attack: { type: 'badnets', target: 0 }, aux: [{ name: 'held', type: 'unseen', source: { path: 't-images-idx3-ubyte', format: 'idx' }, size: 10 }], defenses: ['clp'], outputs: { formats: ['onnx', 'pt'] } }));
    const out2 = path.join(dir, 'out2');
    const r2 = await runJobFile(job, { outDir: out2, device: 'cpu' });
    assert.deepEqual(r2.model.inputShape, [28, 28, 1]);
    assert.equal(r2.rows.length, 1);
    const written = r2.rows[0].output!;
    assert.match(written, /\.onnx$/);
    const files = fs.readdirSync(out2).sort();
    assert.ok(files.includes(written) && files.includes(written.replace(/\.onnx$/, '.pt')), files.join(', '));
    const a = loadModelFile(path.join(out2, written), 't');
    const b = loadModelFile(path.join(out2, written.replace(/\.onnx$/, '.pt')), 't');
    const x = tf.randomUniform([2, 28, 28, 1], 0, 1, 'float32', 3) as tf.Tensor4D;
    const d = tf.tidy(() => tf.max(tf.abs(tf.sub(a.model.forward(x), b.model.forward(x)))).dataSync()[0]);
    assert.ok(d < 1e-5, `the .onnx and .pt outputs are one model (diff ${d})`);
    x.dispose();
    a.model.dispose();
    b.model.dispose();
  });

  it('the CLI gives exit code 2 and one line for malicious and broken model files', function () {
    if (!fs.existsSync(CLI)) this.skip();
    const dir = tempDir('ba-bad-');
    const pt = fs.readFileSync(path.join(FIXTURES, 'parity_vgg_bn_flat.pt'));
    const st = Buffer.from(fs.readFileSync(path.join(FIXTURES, 'parity_vgg_bn_flat.safetensors')));
    st.writeBigUInt64LE(BigInt(st.length) * 4n, 0);
    const rnd = Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 2654435761) >>> 24));
    const cases: Array<[string, Buffer | string, RegExp]> = [
      ['system.pt', path.join(FIXTURES, 'mal_system.pt'), /refusing to load posix\.system/],
      ['truncated.pt', pt.subarray(0, pt.length - 5000), /corrupt zip archive/],
      ['header.safetensors', st, /header length \d+ does not fit the file/],
      ['random.pt', rnd, /not a PyTorch checkpoint/],
      ['random.onnx', rnd, /not a valid ONNX file/],
      ['random.safetensors', rnd, /does not fit the file/],
      ['legacy.pt', path.join(FIXTURES, 'legacy.pt'), /legacy/],
    ];
    for (const [name, content, re] of cases) {
      const f = path.join(dir, name);
      if (typeof content === 'string') fs.copyFileSync(content, f);
      else fs.writeFileSync(f, content);
      const r = spawnSync(process.execPath, [CLI, 'inspect', f], { encoding: 'utf8' });
      assert.equal(r.status, 2, `${name}: ${r.stderr}`);
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, `${name}: ${r.stderr}`);
      assert.match(lines[0], /^error: /);
      assert.match(lines[0], re, name);
    }
    // An unknown ONNX op: the node and op are named.
    const proto = onnx.ModelProto.decode(fs.readFileSync(path.join(FIXTURES, 'parity_plain_bn.onnx')));
    const node = proto.graph!.node!.find((nd) => nd.opType === 'MaxPool')!;
    node.opType = 'MaxPoo9';
    fs.writeFileSync(path.join(dir, 'op.onnx'), onnx.ModelProto.encode(proto).finish());
    const r = spawnSync(process.execPath, [CLI, 'inspect', path.join(dir, 'op.onnx')], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.match(r.stderr.trim(), new RegExp(`^error: unsupported ONNX op MaxPoo9 \\(node "${node.name}"\\)`));
  });

  it('a state_dict nothing recognizes names its first unmatched keys and points to ONNX', async () => {
    const dir = tempDir('ba-unk-');
    const file = path.join(dir, 'plain.pt');
    const m = buildModel({ arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 });
    await saveModelFile(m, file, 'pt');
    m.dispose();
    assert.throws(() => loadModelFile(file, 'audit.json: model'), /first unmatched keys: features\.0\.weight, features\.0\.bias, .*ONNX/);
  });
});
