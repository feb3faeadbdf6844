/**
 * NPD's step through ONNX Runtime against the backend's on a PyTorch-trained PreAct-ResNet18 (the zoo fixture
 * preact8-badnets, the polarizer inserted where the defense inserts it): with the attack's
 * steps at 0 (x_adv = x) the loss and the polarizer's gradients equal the backend's autodiff of the same
 * objective; with BackdoorBench's two attack steps they still agree closely (the signed steps can differ only
 * where a pixel's gradient is about 0).
 */
import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { loadZooFixture, type ZooFixture } from '../helpers/zoo';
import { NpdGraphs, npdLoss, polarizer, targetedAdversarial } from '../../src/engine/defenses/npd';
import { Conv2d } from '../../src/engine/nn/layers';
import type { Model } from '../../src/engine/nn/model';
import type { SGD } from '../../src/engine/nn/optim';
import { makeBatch, makeBatchArray } from '../../src/engine/nn/train';
import { ortTrainWanted } from '../../src/engine/nn/ort_train';
import { maxAbsDiff } from '../helpers/parity';

describe('NPD step through ONNX Runtime (zoo: preact8-badnets)', function () {
  this.timeout(300_000);
  let zoo: ZooFixture;
  let model: Model;
  let vars: tf.Variable[];
  let graphs: NpdGraphs;
  before(async function () {
    await useWasm();
    if (!ortTrainWanted()) this.skip();
    zoo = await loadZooFixture('preact8-badnets');
    model = zoo.loaded.model.clone();
    const at = model.layout.lastBlockConv;
    const pol = model.insertBefore(at, polarizer((model.root.find(at) as Conv2d).inChannels));
    vars = pol.trainableVariables();
    graphs = (await NpdGraphs.create(model, vars, 1))!;
    assert.ok(graphs, 'ONNX Runtime covers the model with its polarizer');
  });
  after(async () => {
    await graphs?.close();
    model?.dispose();
    zoo?.loaded.model.dispose();
  });

  for (const [steps, clip] of [[0, 'image'], [2, 'image'], [2, 'perturbation']] as const) {
    it(`${steps} attack steps (${clip} clipped): the loss and the polarizer's gradients agree with the backend's`, async () => {
      const p = { eps: 3.0, steps, advStep: 0.1, lambda: 0.4, attackStopRate: 0.6 };
      const n = 48;
      const idx = Array.from({ length: n }, (_, i) => i);
      const labels = Int32Array.from(idx, (i) => zoo.aux.y[i]);
      const [h, w, c] = zoo.aux.shape;
      const size = h * w * c;
      const x0 = makeBatch(zoo.aux, idx, undefined, undefined);
      const y0 = tf.tensor1d(labels, 'int32');
      const attacked = await targetedAdversarial(model, x0, y0, p.eps, p.steps, p.advStep, clip, p.attackStopRate);
      tf.dispose([x0, y0]);
      const ref = tf.tidy(() => {
        const x = makeBatch(zoo.aux, idx, undefined, undefined);
        const y = tf.tensor1d(labels, 'int32');
        const packed = attacked;
        const xAdv = tf.reshape(tf.slice(packed, [0, 0], [n, size]), [n, h, w, c]) as tf.Tensor4D;
        const target = tf.cast(tf.reshape(tf.slice(packed, [0, size], [n, 1]), [n]), 'int32') as tf.Tensor1D;
        const own = tf.cast(tf.reshape(tf.slice(packed, [0, size + 1], [n, 1]), [n]), 'int32') as tf.Tensor1D;
        const { value, grads } = tf.variableGrads(() => npdLoss(model.forward(x, { training: false }), y, model.forward(xAdv, { training: false }), own, target, model.numClasses, p.lambda), vars);
        return { value, grads: vars.map((v) => grads[v.name]) };
      });
      // The ONNX Runtime step hands its gradients to the optimizer: catch them there.
      const caught: Float32Array[] = [];
      const catcher = { step: (_: tf.Variable[], gs: tf.Tensor[]) => gs.forEach((g) => caught.push(g.dataSync() as Float32Array)) } as unknown as SGD;
      try {
        const loss = await graphs.step(model, vars, catcher, makeBatchArray(zoo.aux, idx, undefined, undefined), labels, p, clip);
        const want = (await ref.value.data())[0];
        const tol = steps === 0 ? 1e-4 : 0.02;
        assert.ok(Math.abs(loss - want) <= tol * Math.abs(want), `loss ${loss} vs ${want}`);
        for (const [i, v] of vars.entries()) {
          const { diff, scale } = maxAbsDiff(caught[i], (await ref.grads[i].data()) as Float32Array);
          assert.ok(scale > 1e-4, `the gradient of variable ${i} is not zero`);
          assert.ok(diff <= tol * scale, `variable ${i} ${v.shape}: max difference ${diff} at scale ${scale}`);
        }
      } finally {
        attacked.dispose();
        ref.value.dispose();
        tf.dispose(ref.grads);
      }
    });
  }
});
