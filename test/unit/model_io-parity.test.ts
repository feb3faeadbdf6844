import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { FIXTURES, maxAbsDiff, parityCases, parityData } from '../helpers/parity';
import { hasTorch, python } from '../helpers/checkpoints';
import { loadModelFile, saveModelFile } from '../../src/engine/model_files/model_io';
import { readPt } from '../../src/engine/formats/pt';
import { detectArchitecture, stripDataParallel } from '../../src/engine/models/detect';
import { BatchNorm2d, Conv2d, Sequential } from '../../src/engine/nn/layers';
import { Rng } from '../../src/engine/util/rng';
import { tempDir } from '../helpers/temp';

describe('state_dict checkpoints: architecture detection and logits parity with PyTorch', () => {
  before(useWasm);

  for (const c of parityCases()) {
    for (const fmt of ['pt', 'safetensors'] as const) {
      const file = c.files[fmt];
      if (!file) continue;
      it(`${c.name}.${fmt}: recognized as ${c.arch} with ${c.numClasses} classes; logits match PyTorch`, () => {
        const before = tf.memory().numTensors;
        const { model, info } = loadModelFile(path.join(FIXTURES, file), 'test');
        const { x, logits, shape } = parityData(c.name);
        try {
          assert.equal(info.arch, c.arch);
          assert.equal(info.format, fmt);
          assert.equal(info.numClasses, c.numClasses);
          assert.equal(info.inputShape[2], x.shape[3], 'input channels');
          if (c.inputShape) assert.deepEqual(info.inputShape, c.inputShape);
          const y = tf.tidy(() => model.forward(x));
          assert.deepEqual(y.shape, shape);
          const { diff, scale } = maxAbsDiff(y.dataSync(), logits);
          y.dispose();
          assert.ok(scale > 0.1, 'the logits are not trivially small');
          assert.ok(diff <= 1e-4 * Math.max(1, scale), `max abs diff ${diff} (logit scale ${scale})`);
        } finally {
          x.dispose();
          model.dispose();
        }
        assert.equal(tf.memory().numTensors, before, 'no tensor leaked');
      });
    }
  }

  it('a DataParallel state_dict (every key under module.) is read without the prefix', () => {
    const sd = readPt(path.join(FIXTURES, 'parity_resnet18_cifar_dp.pt'));
    assert.ok([...sd.keys()].every((k) => k.startsWith('module.')));
    assert.equal(detectArchitecture(sd), undefined, 'the prefixed keys themselves match nothing');
    const d = detectArchitecture(stripDataParallel(sd))!;
    assert.equal(d.arch, 'resnet18');
    assert.deepEqual(d.options, { width: 4, blocks: [2, 2, 2, 2], stem: 'cifar', shortcut: 'shortcut', head: 'linear' });
  });

  it('the input size is taken from the classifier when a flattening VGG fixes it, and from the job otherwise', () => {
    const flat = detectArchitecture(readPt(path.join(FIXTURES, 'parity_vgg_bn_flat.pt')))!;
    assert.deepEqual(flat.inputShape, [32, 32, 1]);
    assert.equal(flat.inputSizeKnown, true);
    const pooled = detectArchitecture(readPt(path.join(FIXTURES, 'parity_vgg_bn.pt')))!;
    assert.equal(pooled.inputSizeKnown, false);
    const { model, info, inputSizeKnown } = loadModelFile({ path: path.join(FIXTURES, 'parity_preact_w4_c1.pt'), inputShape: [28, 28, 1] }, 'test');
    assert.deepEqual(info.inputShape, [28, 28, 1]);
    assert.equal(inputSizeKnown, true);
    assert.deepEqual(model.spec.options, { width: 4 });
    model.dispose();
  });

  it('pt -> safetensors -> pt round trips are bit-exact for every parity checkpoint', async () => {
    const dir = tempDir('ba-parity-');
    for (const c of parityCases()) {
      if (!c.files.pt) continue;
      const src = path.join(FIXTURES, c.files.pt);
      const { model } = loadModelFile(src, 'test');
      const a = await saveModelFile(model, path.join(dir, `${c.name}.safetensors`), 'safetensors');
      const { model: m2, info } = loadModelFile(a, 'test');
      assert.equal(info.arch, c.arch);
      const b = await saveModelFile(m2, path.join(dir, `${c.name}.pt`), 'pt');
      const orig = stripDataParallel(readPt(src));
      const back = readPt(b);
      assert.deepEqual([...back.keys()].sort(), [...orig.keys()].sort(), c.name);
      for (const [k, t] of orig) {
        const u = back.get(k)!;
        assert.deepEqual(u.shape, t.shape, k);
        assert.deepEqual(Buffer.from(u.data.buffer, u.data.byteOffset, u.data.byteLength), Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength), `${c.name}: ${k}`);
      }
      model.dispose();
      m2.dispose();
    }
  });

  it('a model with an inserted polarizer (1x1 conv + BN) saved as .pt or .safetensors reads back with it', async () => {
    const dir = tempDir('ba-ins-');
    const { model } = loadModelFile({ path: path.join(FIXTURES, 'parity_preact_w4_c1.pt'), inputShape: [28, 28, 1] }, 'test');
    model.insertBefore('layer4.1.conv1', () => new Sequential([new Conv2d(32, 32, 1, { bias: true }, new Rng(4)), new BatchNorm2d(32)]));
    tf.tidy(() => {
      const bn = model.root.find('layer4.1.conv1.inserted.1') as BatchNorm2d;
      bn.runningMean.assign(tf.randomNormal([32], 0, 0.5, 'float32', 8));
    });
    const x = tf.randomUniform([2, 28, 28, 1], 0, 1, 'float32', 2) as tf.Tensor4D;
    const want = tf.tidy(() => model.forward(x).dataSync() as Float32Array);
    for (const fmt of ['pt', 'safetensors'] as const) {
      const file = await saveModelFile(model, path.join(dir, `npd.${fmt}`), fmt);
      const { model: back } = loadModelFile({ path: file, inputShape: [28, 28, 1] }, 'test');
      assert.equal(back.insertions.length, 1, fmt);
      const got = tf.tidy(() => back.forward(x).dataSync() as Float32Array);
      assert.equal(maxAbsDiff(got, want).diff, 0, fmt);
      back.dispose();
    }
    x.dispose();
    model.dispose();
  });

  it('.pt files we write load in PyTorch (weights_only=True) into the source architecture and give our logits', async function () {
    if (!hasTorch()) {
      console.log('      (skipped: /usr/bin/python3 has no torch; install python3-torch to check PyTorch compatibility)');
      this.skip();
    }
    const dir = tempDir('ba-pyt-');
    const script = path.join(__dirname, '..', '..', 'scripts', 'make-fixtures.py');
    const builds: Record<string, string> = {
      preact_w4_c1: 'PreActResNet18(4, 1, 10)',
      resnet18_w4: 'ResNet18(4, 3, 7)',
      vgg_bn_flat: "VGG([8, 8, 'M', 16, 'M', 16, 'M'], 1, 10, avgpool=0)",
    };
    const ourLogits = new Map<string, Float32Array>();
    const jobs: Array<[string, string, string, number[]]> = [];
    for (const [name, ctor] of Object.entries(builds)) {
      const { model } = loadModelFile(path.join(FIXTURES, `parity_${name}.pt`), 'test');
      // Change the weights so that the file PyTorch reads is ours, not the fixture.
      tf.tidy(() => model.head().weight.assign(tf.mul(model.head().weight, -0.5)));
      const file = await saveModelFile(model, path.join(dir, `${name}.pt`), 'pt');
      const { x } = parityData(name);
      ourLogits.set(name, tf.tidy(() => model.forward(x).dataSync() as Float32Array));
      const nchw = tf.tidy(() => tf.transpose(x, [0, 3, 1, 2]).dataSync() as Float32Array);
      fs.writeFileSync(path.join(dir, `${name}.in`), Buffer.from(nchw.buffer, nchw.byteOffset, nchw.byteLength));
      jobs.push([ctor, file, path.join(dir, `${name}.in`), [x.shape[0], x.shape[3], x.shape[1], x.shape[2]]]);
      x.dispose();
      model.dispose();
    }
    // One interpreter for all: importing torch is the slow part.
    const out = python(
      [
        'import importlib.util, sys, json, torch',
        'spec = importlib.util.spec_from_file_location("fx", sys.argv[1]); fx = importlib.util.module_from_spec(spec); spec.loader.exec_module(fx)',
        'res = []',
        'for ctor, f, inp, shape in json.loads(sys.argv[2]):',
        '    m = eval("fx." + ctor).eval()',
        '    m.load_state_dict(torch.load(f, weights_only=True))',
        '    x = torch.frombuffer(bytearray(open(inp, "rb").read()), dtype=torch.float32).reshape(shape)',
        '    res.append(m(x).detach().flatten().tolist())',
        'print(json.dumps(res))',
      ].join('\n'),
      [script, JSON.stringify(jobs)],
    );
    const theirs = JSON.parse(out) as number[][];
    Object.keys(builds).forEach((name, i) => {
      const d = maxAbsDiff(ourLogits.get(name)!, theirs[i]);
      assert.ok(d.scale > 0.05 && d.diff <= 1e-4 * Math.max(1, d.scale), `${name}: diff ${d.diff} (scale ${d.scale})`);
    });
  });
});
