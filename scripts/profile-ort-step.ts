/**
 * Where a training step in ONNX Runtime spends its time, per operator: the step graph of ort_grad_graph.ts for
 * `small-cnn-32` or `preact-resnet18-32` (3x32x32, 10 classes), or `preact8-28` / `preact16-28` (the zoo's width-8
 * and width-16 PreAct-ResNet18 on 1x28x28) under ONNX Runtime's profiler, `threads` threads (default 2), a warm-up run and then `runs` runs,
 * kernel times summed by operator type and averaged per run (PROFILE_OP=<type> lists that type's nodes one by one).
 * `form` picks the graph: `train` (the default: cross-entropy, BatchNorm batch statistics, every parameter
 * gradient), `frozen-forward` (BatchNorm running statistics, logits only: evaluation on aux splits, SAU's clean
 * passes), `frozen-pixels` (BatchNorm running statistics, the pixel gradient of seeded logits: SAU's and NPD's
 * PGD, NC's reversal) or `anp` (BatchNorm batch statistics, the cross-entropy's gradients with respect to every
 * BatchNorm's scales and nothing else: ANP's three runs an iteration, with the weights fed rather than baked in).
 * `plain` as the 7th argument times the runs without the profiler (which slows them) and prints only the wall
 * time, the figure to set beside PyTorch's (`scripts/zoo/torch_step.py`).
 *   npx tsx scripts/profile-ort-step.ts [small-cnn-32|preact-resnet18-32|preact8-28|preact16-28] [batch] [runs] [threads] [form] [plain]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initBackend } from '../src/engine/backend';
import { buildModel } from '../src/engine/models';
import { buildGradGraph } from '../src/engine/nn/ort_grad_graph';
import type { GradGraphOptions } from '../src/engine/nn/ort_grad_contract';
import { loadOrt, nchwcBlockSize, ortSessionOptions } from '../src/engine/backend/onnx_runtime';

async function main(): Promise<void> {
  const name = process.argv[2] ?? 'small-cnn-32';
  const batch = Number(process.argv[3] ?? 128);
  const runs = Number(process.argv[4] ?? 3);
  const ort = loadOrt();
  if (!ort) throw new Error('onnxruntime-node does not load here');
  await initBackend('cpu');
  const threads = Number(process.argv[5] ?? 2);
  const zooWidth = /^preact(\d+)-28$/.exec(name);
  const shape: [number, number, number] = zooWidth ? [28, 28, 1] : [32, 32, 3];
  const model =
    name === 'preact-resnet18-32' || zooWidth
      ? buildModel({ arch: 'preact-resnet18', inputShape: shape, numClasses: 10, options: { width: zooWidth ? Number(zooWidth[1]) : 64 } })
      : buildModel({ arch: 'small-cnn-32', inputShape: shape, numClasses: 10 });
  const form = process.argv[6] ?? 'train';
  const forms: Record<string, GradGraphOptions> = {
    train: { bnTrain: true },
    'frozen-forward': { bnTrain: false, loss: 'none' },
    'frozen-pixels': { bnTrain: false, loss: 'seed', inputGrad: true, paramGrads: false },
    anp: { bnTrain: true, loss: 'ce', paramGrads: false, bnScales: true },
  };
  if (!forms[form]) throw new Error(`form: one of ${Object.keys(forms).join(', ')}`);
  const built = performance.now();
  const graph = buildGradGraph(model, { ...forms[form], nchwcBlock: await nchwcBlockSize(ort) });
  const madeGraph = performance.now();
  const plain = process.argv[7] === 'plain';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ort-profile-'));
  // The engine's session options (ortSessionOptions: no memory pattern among them).
  const session = await ort.InferenceSession.create(graph.bytes, {
    ...ortSessionOptions(threads),
    ...(plain ? {} : { enableProfiling: true, profileFilePrefix: path.join(dir, 'step') }),
  });
  console.log(`graph built in ${(madeGraph - built).toFixed(0)} ms (${graph.bytes.length} bytes), session created in ${(performance.now() - madeGraph).toFixed(0)} ms`);
  const x = Float32Array.from({ length: batch * shape[0] * shape[1] * shape[2] }, (_, i) => (i % 13) / 13);
  const target = Float32Array.from({ length: batch * 10 }, (_, i) => (i % 10 === Math.floor(i / 10) % 10 ? 1 : 0));
  const params = new Map(model.root.namedParams());
  const feeds: Record<string, import('onnxruntime-node').Tensor> = { x: new ort.Tensor('float32', x, [batch, ...shape]) };
  if (form === 'train' || form === 'anp') {
    feeds.target = new ort.Tensor('float32', target, [batch, 10]);
    feeds.inv_batch = new ort.Tensor('float32', Float32Array.of(1 / batch), [1]);
  }
  if (form === 'frozen-pixels') feeds.dlogits = new ort.Tensor('float32', target, [batch, 10]);
  for (const { path: p, channels } of graph.bnScales) for (const k of ['gscale', 'bscale']) feeds[`${k}/${p}`] = new ort.Tensor('float32', new Float32Array(channels).fill(1), [channels]);
  for (const p of graph.paramInputs) feeds[p.key] = new ort.Tensor('float32', (await params.get(p.key)!.variable.data()) as Float32Array, p.shape);
  // Three warm-up runs, timed: the first runs of a session page in its activations (heap_env.ts).
  const firstRuns: number[] = [];
  for (let i = 0; i < 3; i++) {
    const s = performance.now();
    await session.run(feeds);
    firstRuns.push(Math.round(performance.now() - s));
  }
  console.log(`first runs: ${firstRuns.join(', ')} ms`);
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const s = performance.now();
    await session.run(feeds);
    times.push(performance.now() - s);
  }
  const wall = times.reduce((a, b) => a + b, 0) / runs;
  // On a shared machine a few slow runs move the mean; the median and the fastest show the kernel's own time.
  const sorted = [...times].sort((a, b) => a - b);
  console.log(`runs: median ${sorted[Math.floor(runs / 2)].toFixed(0)} ms, fastest ${sorted[0].toFixed(0)}, slowest ${sorted[runs - 1].toFixed(0)}`);
  if (plain) {
    await session.release();
    fs.rmSync(dir, { recursive: true, force: true });
    console.log(`${name} (${form}), batch ${batch}, ${threads} thread${threads === 1 ? '' : 's'}: ${wall.toFixed(0)} ms per run (${((batch * 1000) / wall).toFixed(1)} images/s), no profiler`);
    model.dispose();
    return;
  }
  session.endProfiling();
  await session.release();
  const file = fs.readdirSync(dir).find((f) => f.endsWith('.json'));
  const events = JSON.parse(fs.readFileSync(path.join(dir, file!), 'utf8')) as Array<{ cat?: string; name: string; ts: number; dur: number; args?: { op_name?: string } }>;
  fs.rmSync(dir, { recursive: true, force: true });
  // Only the timed runs: the warm-up runs' first touches of fresh memory would weigh on the memory-bound nodes.
  const sessionRuns = events.filter((e) => e.name === 'model_run').sort((a, b) => a.ts - b.ts);
  const warmedUp = sessionRuns.length > 3 ? sessionRuns[2].ts + sessionRuns[2].dur : -Infinity;
  const byOp = new Map<string, { us: number; nodes: number }>();
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || e.ts <= warmedUp) continue;
    const op = e.args?.op_name ?? '?';
    const s = byOp.get(op) ?? { us: 0, nodes: 0 };
    s.us += e.dur;
    s.nodes++;
    byOp.set(op, s);
  }
  const total = [...byOp.values()].reduce((a, s) => a + s.us, 0) / runs;
  console.log(`${name} (${form}), batch ${batch}: ${wall.toFixed(0)} ms per run (${((batch * 1000) / wall).toFixed(1)} images/s); kernel time ${(total / 1000).toFixed(0)} ms`);
  for (const [op, s] of [...byOp].sort((a, b) => b[1].us - a[1].us)) {
    const ms = s.us / runs / 1000;
    if (ms < 0.5) continue;
    console.log(`  ${op.padEnd(18)} ${ms.toFixed(1).padStart(8)} ms ${((100 * s.us) / runs / total).toFixed(1).padStart(5)}%  (${s.nodes / runs} nodes)`);
  }
  // PROFILE_OP=Transpose (say): that operator's nodes one by one, slowest first, with their input shapes.
  const opOfInterest = process.env.PROFILE_OP;
  if (opOfInterest) {
    const byNode = new Map<string, { us: number; shapes: string }>();
    for (const e of events) {
      if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || e.ts <= warmedUp || e.args?.op_name !== opOfInterest) continue;
      const s = byNode.get(e.name) ?? { us: 0, shapes: JSON.stringify((e.args as { input_type_shape?: unknown }).input_type_shape ?? '') };
      s.us += e.dur;
      byNode.set(e.name, s);
    }
    for (const [node, s] of [...byNode].sort((a, b) => b[1].us - a[1].us).slice(0, 40)) console.log(`    ${(s.us / runs / 1000).toFixed(2).padStart(6)} ms  ${node.replace(/_kernel_time$/, '')}  ${s.shapes}`);
  }
  model.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
