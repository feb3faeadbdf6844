/**
 * Benchmark of the wasm training kernels (a measurement, not a test): for the conv layers of small-cnn-32 and
 * of PreAct-ResNet18 (width 64) at batch 128 on 32x32 inputs, one thread, the median milliseconds of
 *   - the forward Conv2D (reference),
 *   - Conv2DBackpropInput: the wasm package's loop vs ours (a forward convolution),
 *   - Conv2DBackpropFilter (missing from the package): im2col + a per-image batched matmul, and a convolution
 *     with batch and channels swapped (stride as dilation), plus the method the kernel picks;
 * then a whole small-cnn-32 training step (forward + backward + SGD) with each combination registered.
 *
 *   npx tsx scripts/bench-kernels.ts [--repeats 5] [--layers-only] [--step-only]
 */
import * as tf from '@tensorflow/tfjs-core';
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { initBackend } from '../src/engine/backend';
import { originalConv2DBackpropInput } from '../src/engine/backend/kernels';
import { callKernel, release } from '../src/engine/backend/kernels/call';
import { chooseFilterGradMethod, conv2dBackpropFilter, conv2dBackpropFilterConfig, type FilterGradMethod } from '../src/engine/backend/kernels/conv2d_backprop_filter';
import { conv2dBackpropInputConfig } from '../src/engine/backend/kernels/conv2d_backprop_input';
import { buildModel } from '../src/engine/models';
import { SGD } from '../src/engine/nn/optim';
import { crossEntropy, trainStep } from '../src/engine/nn/train';

const args = process.argv.slice(2);
const repeats = Number(args[args.indexOf('--repeats') + 1]) || 5;
const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1];

interface Layer {
  name: string;
  h: number;
  cin: number;
  cout: number;
  k: number;
  stride: number;
  pad: number;
}
const LAYERS: Layer[] = [
  { name: 'small-cnn-32 conv0', h: 32, cin: 3, cout: 32, k: 3, stride: 1, pad: 1 },
  { name: 'small-cnn-32 conv1', h: 32, cin: 32, cout: 32, k: 3, stride: 1, pad: 1 },
  { name: 'small-cnn-32 conv2', h: 16, cin: 32, cout: 64, k: 3, stride: 1, pad: 1 },
  { name: 'small-cnn-32 conv3', h: 16, cin: 64, cout: 64, k: 3, stride: 1, pad: 1 },
  { name: 'small-cnn-32 conv4', h: 8, cin: 64, cout: 128, k: 3, stride: 1, pad: 1 },
  { name: 'resnet18 layer1', h: 32, cin: 64, cout: 64, k: 3, stride: 1, pad: 1 },
  { name: 'resnet18 layer2 down', h: 32, cin: 64, cout: 128, k: 3, stride: 2, pad: 1 },
  { name: 'resnet18 layer2 short', h: 32, cin: 64, cout: 128, k: 1, stride: 2, pad: 0 },
  { name: 'resnet18 layer3', h: 8, cin: 256, cout: 256, k: 3, stride: 1, pad: 1 },
  { name: 'resnet18 layer4', h: 4, cin: 512, cout: 512, k: 3, stride: 1, pad: 1 },
];

function time(f: () => TensorInfo, backend: unknown): number {
  release(backend, f()); // warm-up (XNNPACK operator creation, heap growth)
  const t: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    const out = f();
    t.push(performance.now() - t0);
    release(backend, out);
  }
  return median(t);
}

function benchLayers(): void {
  const backend = tf.backend();
  const original = originalConv2DBackpropInput();
  const ours = conv2dBackpropInputConfig(original!);
  console.log(`per layer, batch 128, median of ${repeats} (ms)`);
  console.log('layer                      | fwd conv | dx loop | dx conv | dW im2col | dW swapped | dW picked');
  const totals = { fwd: 0, dxLoop: 0, dxConv: 0, im2col: 0, swapped: 0, picked: 0 };
  for (const l of LAYERS) {
    const x = tf.randomUniform([128, l.h, l.h, l.cin], -1, 1, 'float32', 1);
    const w = tf.randomUniform([l.k, l.k, l.cin, l.cout], -1, 1, 'float32', 2);
    const y = tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, l.stride, l.pad);
    const dy = tf.randomUniform(y.shape, -1, 1, 'float32', 3);
    const convAttrs = { strides: l.stride, pad: l.pad, dataFormat: 'NHWC', dilations: 1, dimRoundingMode: undefined };
    const inAttrs = { strides: l.stride, pad: l.pad, dataFormat: 'NHWC', dimRoundingMode: undefined, inputShape: x.shape };
    const fAttrs = { strides: l.stride, pad: l.pad, dataFormat: 'NHWC', dimRoundingMode: undefined, filterShape: w.shape } as unknown as tf.Conv2DBackpropFilterAttrs;
    const fwd = time(() => callKernel('Conv2D', { x, filter: w }, backend, convAttrs), backend);
    const dxLoop = time(() => original!.kernelFunc({ inputs: { dy, filter: w }, backend, attrs: inAttrs as never }) as TensorInfo, backend);
    const dxConv = time(() => ours.kernelFunc({ inputs: { dy, filter: w }, backend, attrs: inAttrs as never }) as TensorInfo, backend);
    const dW = (m: FilterGradMethod) => time(() => conv2dBackpropFilter(x, dy, fAttrs, backend, m), backend);
    const im2col = dW('im2col');
    const swapped = dW('swapped-conv');
    const pickedMethod = chooseFilterGradMethod({ cin: l.cin, kh: l.k, kw: l.k });
    const picked = pickedMethod === 'im2col' ? im2col : swapped;
    Object.entries({ fwd, dxLoop, dxConv, im2col, swapped, picked }).forEach(([k, v]) => (totals[k as keyof typeof totals] += v));
    const f = (v: number) => v.toFixed(1).padStart(8);
    console.log(`${l.name.padEnd(26)} | ${f(fwd)} | ${f(dxLoop)} | ${f(dxConv)} | ${f(im2col)}  | ${f(swapped)}   | ${f(picked)} (${pickedMethod})`);
    tf.dispose([x, w, y, dy]);
  }
  const f = (v: number) => v.toFixed(1).padStart(8);
  console.log(`${'sum'.padEnd(26)} | ${f(totals.fwd)} | ${f(totals.dxLoop)} | ${f(totals.dxConv)} | ${f(totals.im2col)}  | ${f(totals.swapped)}   | ${f(totals.picked)}`);
}

/** Re-register the two kernels with a given combination (the bench's own switch; the product registers once). */
function use(dx: 'loop' | 'conv', dW: FilterGradMethod | 'picked'): void {
  const original = originalConv2DBackpropInput()!;
  tf.unregisterKernel('Conv2DBackpropInput', 'wasm');
  tf.registerKernel(dx === 'loop' ? original : conv2dBackpropInputConfig(original));
  tf.unregisterKernel('Conv2DBackpropFilter', 'wasm');
  tf.registerKernel(
    dW === 'picked'
      ? conv2dBackpropFilterConfig
      : {
          ...conv2dBackpropFilterConfig,
          kernelFunc: ({ inputs, backend, attrs }) => {
            const { x, dy } = inputs as { x: TensorInfo; dy: TensorInfo };
            return conv2dBackpropFilter(x, dy, attrs as unknown as tf.Conv2DBackpropFilterAttrs, backend, dW);
          },
        },
  );
}

async function benchStep(): Promise<void> {
  const batch = 128;
  const m = buildModel({ arch: 'small-cnn-32', inputShape: [32, 32, 3], numClasses: 10 });
  const opt = new SGD(0.01, 0.9, 5e-4);
  const x = tf.randomUniform([batch, 32, 32, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
  const y = tf.tensor1d(Array.from({ length: batch }, (_, i) => i % 10), 'int32');
  const vars = m.trainableVariables();
  const step = () => trainStep(vars, opt, (ctx) => crossEntropy(m.forward(x, ctx), y), true);
  console.log(`\nsmall-cnn-32 training step (forward + backward + SGD, BatchNorm included), batch ${batch}, median of ${repeats}`);
  const combos: Array<[string, 'loop' | 'conv', FilterGradMethod | 'picked']> = [
    ['package dx loop + swapped-conv dW', 'loop', 'swapped-conv'],
    ['conv dx + swapped-conv dW', 'conv', 'swapped-conv'],
    ['conv dx + im2col dW', 'conv', 'im2col'],
    ['conv dx + picked dW (registered)', 'conv', 'picked'],
  ];
  for (const [name, dx, dW] of combos) {
    use(dx, dW);
    await step();
    const t: number[] = [];
    for (let i = 0; i < repeats; i++) {
      const t0 = performance.now();
      await step();
      t.push(performance.now() - t0);
    }
    const ms = median(t);
    console.log(`  ${name.padEnd(40)} ${ms.toFixed(0).padStart(6)} ms/step  ${((batch * 1000) / ms).toFixed(1).padStart(6)} images/s`);
  }
  use('conv', 'picked');
  opt.dispose();
  m.dispose();
  tf.dispose([x, y]);
}

async function main(): Promise<void> {
  const info = await initBackend('cpu');
  if (info.name !== 'wasm') throw new Error(`expected wasm, got ${info.name}`);
  if (!args.includes('--step-only')) benchLayers();
  if (!args.includes('--layers-only')) await benchStep();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
