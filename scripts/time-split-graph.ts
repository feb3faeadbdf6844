/**
 * A seeded graph run whole after a forward graph, against the same graph split into its forward and backward
 * parts (ort_graph_split.ts), on a PreAct-ResNet18 of the given width, batch 64: wall and CPU milliseconds per
 * pass (ONNX Runtime on one thread, so CPU time is the work even on a busy machine). A measurement, not a test.
 *
 *   npx tsx scripts/time-split-graph.ts [width, default 16]
 */
import { useWasm } from '../test/helpers/backend';
import { buildModel } from '../src/engine/models';
import { OrtModelGraph } from '../src/engine/nn/ort_graph';
(async () => {
  await useWasm();
  const w = Number(process.argv[2] ?? 16);
  const m = buildModel({ arch: 'preact-resnet18', inputShape: [28, 28, 1], numClasses: 10, options: { width: w } } as any, { mean: [0.3], std: [0.35] }, 1);
  const fwd = (await OrtModelGraph.create(m, { bnTrain: false, loss: 'none' }))!;
  for (const pg of [false, true]) {
    const o = { bnTrain: false, loss: 'seed', inputGrad: true, paramGrads: pg } as const;
    const whole = (await OrtModelGraph.create(m, o))!;
    const split = (await OrtModelGraph.create(m, { ...o, split: true }))!;
    const n = 64;
    const x = new Float32Array(n * 784).map(() => Math.random());
    const dl = new Float32Array(n * 10).map(() => Math.random() - 0.5);
    const reps = 8;
    const time = async (name: string, f: () => Promise<void>) => {
      await f();
      const c = process.cpuUsage(); const t = performance.now();
      for (let i = 0; i < reps; i++) await f();
      const u = process.cpuUsage(c);
      console.log(`w${w} ${pg ? 'weights+pixels' : 'pixels'} ${name}: ${((performance.now() - t) / reps).toFixed(1)} ms wall, ${((u.user + u.system) / 1000 / reps).toFixed(1)} ms cpu`);
    };
    await time('forward + whole VJP', async () => { await fwd.logits(x, n); await whole.run(x, n, { dlogits: dl }); });
    await time('split forward + backward', async () => { const p = await split.forward(x, n); await split.backward(p, { dlogits: dl }); });
    await time('forward only', async () => { await fwd.logits(x, n); });
  }
})();
