/**
 * Where a training step's time goes, per kernel: one step of `small-cnn-32` or `preact-resnet18-32` (3x32x32,
 * 10 classes) on the wasm backend under tf.profile, after a warm-up step, summed by kernel name.
 *   npx tsx scripts/profile-step.ts [small-cnn-32|preact-resnet18-32|small-cnn-mnist] [batch]  (small-cnn-mnist: the demo victim, 28x28x1)
 */
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../src/engine/backend';
import { buildModel } from '../src/engine/models';
import { SGD } from '../src/engine/nn/optim';
import { crossEntropy, trainStep } from '../src/engine/nn/train';

async function main(): Promise<void> {
  const name = process.argv[2] ?? 'small-cnn-32';
  const batch = Number(process.argv[3] ?? 128);
  const backend = await initBackend('cpu');
  const model =
    name === 'preact-resnet18-32'
      ? buildModel({ arch: 'preact-resnet18', inputShape: [32, 32, 3], numClasses: 10, options: { width: 64 } })
      : name === 'small-cnn-mnist'
        ? buildModel({ arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 }, { mean: [0.1307], std: [0.3081] })
        : buildModel({ arch: 'small-cnn-32', inputShape: [32, 32, 3], numClasses: 10 });
  const opt = new SGD(0.01, 0.9, 5e-4);
  const x = tf.randomUniform([batch, ...model.inputShape], 0, 1, 'float32', 1) as tf.Tensor4D;
  const y = tf.tensor1d(Array.from({ length: batch }, (_, i) => i % 10), 'int32');
  const vars = model.trainableVariables();
  const step = () => trainStep(vars, opt, (ctx) => crossEntropy(model.forward(x, ctx), y), true);
  await step();
  const t0 = performance.now();
  const info = await tf.profile(async () => {
    await step();
  });
  const wall = performance.now() - t0;
  const byKernel = new Map<string, { ms: number; calls: number }>();
  for (const k of info.kernels) {
    const e = byKernel.get(k.name) ?? { ms: 0, calls: 0 };
    e.ms += Number(await k.kernelTimeMs) || 0;
    e.calls++;
    byKernel.set(k.name, e);
  }
  const total = [...byKernel.values()].reduce((s, e) => s + e.ms, 0);
  process.stdout.write(`${name}, batch ${batch}, ${backend.name} (${backend.threads} thread): step ${wall.toFixed(0)} ms (${((batch * 1000) / wall).toFixed(1)} images/s), kernels ${total.toFixed(0)} ms\n`);
  for (const [k, e] of [...byKernel.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, 15)) {
    process.stdout.write(`  ${k.padEnd(28)} ${e.ms.toFixed(1).padStart(9)} ms ${((100 * e.ms) / total).toFixed(1).padStart(5)}%  ${e.calls} calls\n`);
  }
  opt.dispose();
  model.dispose();
  tf.dispose([x, y]);
}

void main();
