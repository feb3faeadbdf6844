/**
 * Probe: what exact data parallelism over processes would cost before any exchange. BatchNorm in training mode
 * needs the whole batch's per-channel sums, so a step split over processes must stop at each of them (forward:
 * the mean and the variance; backward: sum(dy) and sum(dy * (x - mean))), exchange, and go on. This cuts the
 * training step of ort_grad_graph.ts at every such reduction into segments, one ONNX Runtime session each (each
 * node as late as its readers allow, so that only what a later segment reads crosses), runs them one after the
 * other on one thread with the reductions passed through unchanged (one process, no exchange), checks that the
 * outputs equal the whole graph's, and times both. The difference is the floor of the split's overhead:
 * sessions, and the tensors that cross between them through JavaScript.
 *   npx tsx scripts/probe-ort-segments.ts [width 16] [batch 64] [runs 6]
 */
import { onnx } from 'onnx-proto';
import { initBackend } from '../src/engine/backend';
import { buildModel } from '../src/engine/models';
import { buildGradGraph } from '../src/engine/nn/ort_grad_graph';
import { outputElemType } from '../src/engine/nn/ort_graph_split';
import { loadOrt, nchwcBlockSize } from '../src/engine/backend/onnx_runtime';
import type { Tensor } from 'onnxruntime-node';

const T = onnx.TensorProto.DataType;

/** Whether a node is a per-channel reduction over batch and space (what synchronized BatchNorm exchanges). */
function isBatchReduction(nd: onnx.INodeProto, g: onnx.IGraphProto): boolean {
  if (nd.opType === 'ReduceMean' || nd.opType === 'ReduceSumSquare') return true;
  if (nd.opType !== 'ReduceSum') return false;
  const axes = g.initializer?.find((t) => t.name === nd.input?.[1]);
  const values = axes?.int64Data?.length ? axes.int64Data.map(Number) : axes?.rawData ? [...new BigInt64Array(new Uint8Array(axes.rawData).slice().buffer)].map(Number) : [];
  return values.join(',') === '0,2,3';
}

/**
 * Segments: a node's segment is one more than the latest cut it depends on, then moved as late as its readers
 * allow; each segment's inputs are what it reads and does not make, its outputs what later segments or the
 * graph's outputs read.
 */
function segment(g: onnx.IGraphProto, cuts: Set<string>) {
  const nodes = g.node!;
  const level = new Map<string, number>();
  const nodeLevel = nodes.map((nd) => {
    let l = 0;
    for (const i of nd.input ?? []) if (i) l = Math.max(l, (level.get(i) ?? 0) + (cuts.has(i) ? 1 : 0));
    for (const o of nd.output ?? []) level.set(o, l);
    return l;
  });
  const graphOutputs = new Set(g.output!.map((o) => o.name!));
  const readers = new Map<string, number[]>();
  nodes.forEach((nd, i) => (nd.input ?? []).forEach((t) => t && readers.set(t, [...(readers.get(t) ?? []), i])));
  for (let i = nodes.length - 1; i >= 0; i--) {
    const outs = nodes[i].output ?? [];
    if (outs.some((o) => cuts.has(o) || graphOutputs.has(o))) continue;
    const later = Math.min(...outs.flatMap((o) => (readers.get(o) ?? []).map((r) => nodeLevel[r])));
    if (Number.isFinite(later) && later > nodeLevel[i]) nodeLevel[i] = later;
  }
  const count = Math.max(...nodeLevel) + 1;
  const types = new Map<string, number>();
  nodes.forEach((nd) => (nd.output ?? []).forEach((o, j) => types.set(o, outputElemType(nd, j))));
  const initializers = new Set(g.initializer!.map((t) => t.name!));
  const segNodes = Array.from({ length: count }, (_, s) => nodes.filter((_, i) => nodeLevel[i] === s));
  const readIn = segNodes.map((ns) => new Set(ns.flatMap((nd) => (nd.input ?? []).filter((t) => t))));
  const info = (name: string) => g.input!.find((v) => v.name === name) ?? g.output!.find((v) => v.name === name) ?? onnx.ValueInfoProto.create({ name, type: { tensorType: { elemType: types.get(name) ?? T.FLOAT } } });
  return segNodes.map((ns, s) => {
    const made = new Set(ns.flatMap((nd) => nd.output ?? []));
    const inputs = [...readIn[s]].filter((t) => !made.has(t) && !initializers.has(t));
    const outputs = [...made].filter((o) => graphOutputs.has(o) || readIn.some((r, later) => later > s && r.has(o)));
    const graph: onnx.IGraphProto = { name: `segment-${s}`, node: ns, initializer: g.initializer!.filter((t) => readIn[s].has(t.name!)), input: inputs.map(info), output: outputs.map(info) };
    return { inputs, graph };
  });
}

async function main(): Promise<void> {
  const [width, batch, runs] = [Number(process.argv[2] ?? 16), Number(process.argv[3] ?? 64), Number(process.argv[4] ?? 6)];
  const ort = loadOrt();
  if (!ort) throw new Error('onnxruntime-node does not load here');
  await initBackend('cpu');
  const model = buildModel({ arch: 'preact-resnet18', inputShape: [28, 28, 1], numClasses: 10, options: { width } });
  const built = buildGradGraph(model, { bnTrain: true, nchwcBlock: await nchwcBlockSize(ort) });
  const decoded = onnx.ModelProto.decode(built.bytes);
  const g = decoded.graph!;
  const cuts = new Set((g.node ?? []).filter((nd) => isBatchReduction(nd, g)).map((nd) => nd.output?.[0] ?? ""));
  const segments = segment(g, cuts);
  const options = { graphOptimizationLevel: 'all' as const, intraOpNumThreads: 1, interOpNumThreads: 1 };
  const encode = (graph: onnx.IGraphProto) => onnx.ModelProto.encode(onnx.ModelProto.create({ irVersion: decoded.irVersion, opsetImport: decoded.opsetImport, producerName: 'probe', graph })).finish();
  const sessions = await Promise.all(segments.map((s) => ort.InferenceSession.create(encode(s.graph), options)));
  const whole = await ort.InferenceSession.create(built.bytes, options);
  const params = new Map(model.root.namedParams());
  const feeds: Record<string, Tensor> = {
    x: new ort.Tensor('float32', Float32Array.from({ length: batch * 784 }, (_, i) => (i % 13) / 13), [batch, 28, 28, 1]),
    target: new ort.Tensor('float32', Float32Array.from({ length: batch * 10 }, (_, i) => (i % 10 === Math.floor(i / 10) % 10 ? 1 : 0)), [batch, 10]),
    inv_batch: new ort.Tensor('float32', Float32Array.of(1 / batch), [1]),
  };
  for (const p of built.paramInputs) feeds[p.key] = new ort.Tensor('float32', (await params.get(p.key)!.variable.data()) as Float32Array, p.shape);
  let crossedBytes = 0;
  const runSegments = async () => {
    const env: Record<string, Tensor> = { ...feeds };
    crossedBytes = 0;
    for (let s = 0; s < segments.length; s++) {
      const out = await sessions[s].run(Object.fromEntries(segments[s].inputs.map((t) => [t, env[t]])));
      for (const [name, t] of Object.entries(out)) {
        env[name] = t;
        crossedBytes += (t.data as Float32Array).byteLength;
      }
    }
    return env;
  };
  const reference = await whole.run(feeds);
  const split = await runSegments();
  let maxDiff = 0;
  for (const [name, t] of Object.entries(reference)) {
    const a = t.data as Float32Array;
    const b = split[name].data as Float32Array;
    for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
  }
  const time = async (f: () => Promise<unknown>) => {
    await f();
    const t0 = performance.now();
    for (let i = 0; i < runs; i++) await f();
    return (performance.now() - t0) / runs;
  };
  const wholeMs = await time(() => whole.run(feeds));
  const splitMs = await time(runSegments);
  console.log(`PreAct-ResNet18 width ${width}, batch ${batch}, one thread: ${cuts.size} cuts, ${segments.length} segments, ${(crossedBytes / 1e6).toFixed(1)} MB crossing; outputs differ by at most ${maxDiff}`);
  console.log(`  whole graph ${wholeMs.toFixed(1)} ms a step, segments ${splitMs.toFixed(1)} ms (${(splitMs - wholeMs).toFixed(1)} ms more)`);
  await Promise.all([...sessions, whole].map((s) => s.release()));
  model.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
