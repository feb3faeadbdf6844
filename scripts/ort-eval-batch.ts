/**
 * Evaluation speed through ONNX Runtime by batch size: OrtPredictor (as evaluateModelFast runs it) on a
 * PreAct-ResNet18 of the zoo's shape (1x28x28, 10 classes, width `width`) with random weights, `images` images
 * labelled per run, median of `runs` runs per batch size, sizes alternated round by round so that a slow spell
 * of the machine does not land on one size. The figures behind ORT_EVAL_BATCH (src/engine/metrics/evaluate.ts).
 *   npx tsx scripts/ort-eval-batch.ts [width 16] [threads 1] [runs 5] [images 2048] [sizes 64,128,256]
 */
import { initBackend } from '../src/engine/backend';
import { buildModel } from '../src/engine/models';
import { OrtPredictor } from '../src/engine/metrics/ort_eval';

async function main(): Promise<void> {
  const [width, threads, runs, images] = [16, 1, 5, 2048].map((d, i) => Number(process.argv[2 + i] ?? d));
  const sizes = (process.argv[6] ?? '64,128,256').split(',').map(Number);
  await initBackend('cpu');
  const model = buildModel({ arch: 'preact-resnet18', inputShape: [28, 28, 1], numClasses: 10, options: { width } });
  const ort = await OrtPredictor.create(model, threads);
  model.dispose();
  if (!ort) throw new Error('ONNX Runtime does not load here');
  const set = { n: images, shape: [28, 28, 1] as [number, number, number], x: Float32Array.from({ length: images * 784 }, (_, i) => (i % 13) / 13), y: new Int32Array(images), numClasses: 10 };
  const times = new Map<number, number[]>(sizes.map((s) => [s, []]));
  await ort.labels(set, sizes[0]);
  for (let r = 0; r < runs; r++) {
    for (const s of sizes) {
      const t0 = performance.now();
      await ort.labels(set, s);
      times.get(s)!.push(performance.now() - t0);
    }
  }
  await ort.dispose();
  for (const [s, t] of times) {
    t.sort((a, b) => a - b);
    console.log(`batch ${String(s).padStart(4)}: ${((t[t.length >> 1] * 1000) / images).toFixed(0)} us an image (median of ${runs}; fastest ${((t[0] * 1000) / images).toFixed(0)}), ${threads} thread${threads === 1 ? '' : 's'}`);
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
