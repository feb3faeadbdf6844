/**
 * `backdoor-audit bench`: train-step and inference images/s of small-cnn-32 and preact-resnet18-32 (3x32x32,
 * 10 classes, batch 128) on the active backend, medians of repeats after a warm-up; the `demo --quick` wall
 * time (cells on every core) and its GIC time per aux set; every defense's wall time, ACC and ASR on the demo's
 * victim; peak RSS; tensor counts. Where Debian's python3-torch is installed, the same models and steps run in
 * PyTorch (2 threads) in the same run and the ratios are printed. Then the purification section
 * (bench_purify.ts): chosen defenses on a PyTorch-trained PreAct-ResNet18 victim, ours and PyTorch's in the same
 * run. Benchmarks measure; they assert nothing.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { initBackend, type BackendName, type Device } from './backend';
import { DataParallel, defaultReplicas } from './nn/data_parallel';
import { OrtTrainer } from './nn/ort_train';
import { buildModel } from './models';
import { SGD } from './nn/optim';
import { crossEntropy, trainStep } from './nn/train';
import { readFloats, takeFloats } from './nn/read';
import { runDemo, DEMO_TARGET, FULL_DEFENSES } from './jobs/demo';
import { runJobFile } from './jobs/runner';
import { writeJsonAtomic } from './util/atomic';
import { OrtPredictor } from './metrics/ort_eval';
import { benchPurification, defaultVictimDir, median, purificationJob, type PurificationBench } from './bench_purify';
import { heapEnv } from './util/heap_env';

interface ModelBench {
  /** Training steps as fitting runs them: on `trainEngine` (ONNX Runtime where it loads, else the backend). */
  trainImagesPerSecond: number;
  trainEngine: 'onnxruntime' | 'backend';
  /** ONNX Runtime's intra-op threads for the training step (null when training runs on the backend). */
  trainThreads: number | null;
  /** Training steps on the backend, split over `trainReplicas` data-parallel replicas (one per core on the CPU backends). */
  trainImagesPerSecondBackend: number;
  /** The same step on this thread alone. */
  trainImagesPerSecondOneThread?: number;
  trainReplicas?: number;
  inferImagesPerSecond: number;
  /** Inference through ONNX Runtime (the model exported in memory), as evaluation runs it; null without it. */
  ortInferImagesPerSecond?: number | null;
}

async function benchOrt(arch: string, options: Record<string, unknown> | undefined, batch: number, repeats: number): Promise<number | null> {
  const m = buildModel({ arch, inputShape: [32, 32, 3], numClasses: 10, options });
  const ort = await OrtPredictor.create(m, os.cpus().length);
  m.dispose();
  if (!ort) return null;
  const set = { n: batch, shape: [32, 32, 3] as [number, number, number], x: new Float32Array(batch * 32 * 32 * 3).fill(0.5), y: new Int32Array(batch), numClasses: 10 };
  await ort.logits(set, batch);
  const t: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    await ort.logits(set, batch);
    t.push(performance.now() - t0);
  }
  await ort.dispose();
  return (batch * 1000) / median(t);
}

async function benchModel(arch: string, options: Record<string, unknown> | undefined, batch: number, repeats: number, backend: BackendName): Promise<ModelBench> {
  const m = buildModel({ arch, inputShape: [32, 32, 3], numClasses: 10, options });
  const opt = new SGD(0.01, 0.9, 5e-4);
  const x = tf.randomUniform([batch, 32, 32, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
  const labels = Int32Array.from({ length: batch }, (_, i) => i % 10);
  const y = tf.tensor1d(labels, 'int32');
  const vars = m.trainableVariables();
  const step = () => trainStep(vars, opt, (ctx) => crossEntropy(m.forward(x, ctx), y), true);
  const parallel = await DataParallel.create(m, defaultReplicas(backend), backend);
  const xFlat = await readFloats(x);
  const parallelStep = () => parallel!.step(opt, xFlat, [32, 32, 3], labels, true);
  // The logits read back, as evaluation reads them (on a GPU backend, a forward is not done until it is read).
  const infer = () => takeFloats(tf.tidy(() => m.forward(x)));
  const time = async (f: () => unknown) => {
    await f();
    const t: number[] = [];
    for (let i = 0; i < repeats; i++) {
      const t0 = performance.now();
      await f();
      t.push(performance.now() - t0);
    }
    return (batch * 1000) / median(t);
  };
  // The step the CPU training loops take when ONNX Runtime is there (ort_train.ts), first, on fresh weights.
  const ort = backend === 'wasm' || backend === 'cpu' ? await OrtTrainer.create(m, { threads: defaultReplicas(backend) }) : undefined;
  const trainThreads = ort?.threads ?? null;
  const ortRate = ort ? await time(() => ort.step(opt, xFlat, [32, 32, 3], labels, true)) : undefined;
  await ort?.close();
  const oneThread = await time(step);
  const backendRate = parallel ? await time(parallelStep) : oneThread;
  const inferRate = await time(infer);
  const out: ModelBench = {
    trainImagesPerSecond: ortRate ?? backendRate,
    trainEngine: ortRate ? 'onnxruntime' : 'backend',
    trainThreads,
    trainImagesPerSecondBackend: backendRate,
    trainImagesPerSecondOneThread: oneThread,
    trainReplicas: parallel?.size ?? 1,
    inferImagesPerSecond: inferRate,
  };
  await parallel?.close();
  opt.dispose();
  m.dispose();
  tf.dispose([x, y]);
  return out;
}

function torchPeer(repeats: number): Record<string, ModelBench> | undefined {
  const script = path.join(__dirname, '..', 'scripts', 'bench_torch.py');
  const candidates = [script, path.join(__dirname, '..', '..', 'scripts', 'bench_torch.py')];
  const found = candidates.find((c) => fs.existsSync(c));
  if (!found || !fs.existsSync('/usr/bin/python3')) return undefined;
  const r = spawnSync('/usr/bin/python3', [found, String(repeats)], { encoding: 'utf8', timeout: 600_000, env: heapEnv() });
  if (r.status !== 0) return undefined;
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop()!);
  } catch {
    return undefined;
  }
}

interface DefenseBench {
  acc: number | null;
  asr: number | null;
  seconds: number;
  error: string | null;
}

/**
 * Every defense (fast profile) on the demo's victim with an unseen auxiliary set of the demo's size, one at a
 * time in this thread (--workers 1) so that each wall time is the defense's own.
 */
async function benchDefenses(demoDir: string, log: (s: string) => void, device: Device): Promise<Record<string, DefenseBench>> {
  const job = path.join(demoDir, 'bench-defenses.json');
  fs.writeFileSync(
    job,
    JSON.stringify({
      model: 'victim.safetensors',
      data: { test: { format: 'mnist-embedded' } },
      attack: { type: 'badnets', target: DEMO_TARGET },
      aux: [{ name: 'unseen', type: 'unseen', source: { format: 'mnist-embedded' }, size: 300 }],
      defenses: FULL_DEFENSES,
      gic: { mode: 'off' },
      embedding: { method: 'none' },
      profile: 'fast',
      seed: 0,
    }),
  );
  log(`defenses on the demo victim (unseen, 300 images, fast profile): ${FULL_DEFENSES.join(', ')}...`);
  const results = await runJobFile(job, { outDir: path.join(demoDir, 'bench-defenses'), workers: 1, device });
  const out: Record<string, DefenseBench> = {};
  for (const r of results.rows) {
    out[r.defense] = { acc: r.acc ?? null, asr: r.asr ?? null, seconds: r.seconds, error: r.error };
    log(`  ${r.defense.padEnd(6)} ${r.error ? `error: ${r.error}` : `ACC ${(100 * r.acc!).toFixed(1)}% ASR ${(100 * r.asr!).toFixed(1)}%`} ${r.seconds.toFixed(1)} s`);
  }
  log(`  baseline: ACC ${(100 * results.baseline.acc).toFixed(1)}% ASR ${(100 * results.baseline.asr!).toFixed(1)}%`);
  return out;
}

export interface BenchOptions {
  jsonPath?: string;
  log: (s: string) => void;
  skipDemo?: boolean;
  skipDefenses?: boolean;
  /** auto | gpu | cpu: `gpu` measures the GPU backend that loads or fails with the doctor's line. */
  device?: Device;
  /** Only the purification section (no images/s, demo or demo-victim defenses). */
  onlyPurification?: boolean;
  /** The purification section's defenses; empty skips the section. */
  purification?: string[];
  /** The zoo victim folder of the purification section (default: the committed test fixture). */
  victimDir?: string;
  /** Also time the whole default job (every defense) on that victim. */
  wholeJob?: boolean;
  /** Runs of each side per defense in the purification section, alternated; medians reported. Default 1. */
  repeat?: number;
}

export async function runBench(o: BenchOptions): Promise<Record<string, unknown>> {
  // A victim folder that cannot serve is refused now, not after the other sections' minutes.
  if (o.purification?.length || o.wholeJob) purificationJob(o.victimDir ?? defaultVictimDir(), []);
  const device = o.device ?? 'auto';
  // `gpu` fails here, with the one line saying why, rather than measuring the CPU under a GPU's name.
  const backend = await initBackend(device);
  o.log(`backend: ${backend.name}${backend.adapter ? ` on ${backend.adapter}` : ''}${backend.ort === 'webgpu' ? ', ONNX Runtime on its WebGPU provider' : ''} (device ${device})`);
  const tensorsBefore = tf.memory().numTensors;
  const repeats = 5;
  const models: Record<string, ModelBench> = {};
  for (const [name, arch, options] of o.onlyPurification ? [] : [
    ['small-cnn-32', 'small-cnn-32', undefined],
    ['preact-resnet18-32', 'preact-resnet18', { width: 64 }],
  ] as const) {
    o.log(`benchmarking ${name} (batch 128)...`);
    try {
      models[name] = await benchModel(arch, options, 128, name === 'small-cnn-32' ? repeats : 3, backend.name);
      models[name].ortInferImagesPerSecond = await benchOrt(arch, options, 128, repeats);
      const ortRate = models[name].ortInferImagesPerSecond;
      const r = models[name];
      o.log(`  ${name}: train ${r.trainImagesPerSecond.toFixed(1)} images/s (${r.trainEngine === 'onnxruntime' ? `ONNX Runtime, ${r.trainThreads} threads` : 'backend'}; backend ${r.trainImagesPerSecondBackend.toFixed(1)} on ${r.trainReplicas} replica(s), ${r.trainImagesPerSecondOneThread!.toFixed(1)} on one thread), inference ${models[name].inferImagesPerSecond.toFixed(1)} images/s${ortRate ? `, inference through ONNX Runtime ${ortRate.toFixed(1)} images/s` : ''}`);
    } catch (e) {
      // The wasm heap is limited to 4 GiB; a full-width PreAct-ResNet18 step at batch 128 can exceed it.
      o.log(`  ${name}: failed: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  if (!o.onlyPurification) o.log('PyTorch peer (Debian python3-torch, 2 threads)...');
  const torch = o.onlyPurification ? undefined : torchPeer(repeats);
  if (torch) {
    for (const [name, t] of Object.entries(torch)) {
      const ours = models[name];
      if (!ours) continue;
      const ortRatio = ours.ortInferImagesPerSecond ? `, ONNX Runtime inference ${(ours.ortInferImagesPerSecond / t.inferImagesPerSecond).toFixed(2)}x` : '';
      o.log(`  ${name}: PyTorch train ${t.trainImagesPerSecond.toFixed(1)}, inference ${t.inferImagesPerSecond.toFixed(1)} images/s; ratio train ${(ours.trainImagesPerSecond / t.trainImagesPerSecond).toFixed(2)}x, inference ${(ours.inferImagesPerSecond / t.inferImagesPerSecond).toFixed(2)}x${ortRatio}`);
    }
  } else if (!o.onlyPurification) {
    o.log('  not available (install Debian python3-torch)');
  }
  let demoSeconds: number | undefined;
  let cellWorkers: number | undefined;
  let gic: Record<string, number> | undefined;
  let defenses: Record<string, DefenseBench> | undefined;
  if (!o.skipDemo && !o.onlyPurification) {
    o.log('demo --quick...');
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'backdoor-audit-bench-'));
    try {
      const t0 = Date.now();
      const demo = await runDemo({ quick: true, outDir: out, device });
      demoSeconds = (Date.now() - t0) / 1000;
      cellWorkers = demo.backend.threads;
      gic = Object.fromEntries(demo.gic.map((g) => [g.aux, g.seconds]));
      o.log(`  demo --quick: ${demoSeconds.toFixed(1)} s with ${cellWorkers} cell thread(s); GIC per aux set: ${demo.gic.map((g) => `${g.aux} ${g.seconds.toFixed(1)} s`).join(', ')}`);
      if (!o.skipDefenses) defenses = await benchDefenses(out, o.log, device);
    } finally {
      fs.rmSync(out, { recursive: true, force: true });
    }
  }
  let purification: PurificationBench | undefined;
  if (o.purification?.length || o.wholeJob) purification = await benchPurification({ victimDir: o.victimDir, defenses: o.purification ?? [], wholeJob: o.wholeJob, repeat: o.repeat, log: o.log });
  const result = {
    backend: backend.name,
    device,
    adapter: backend.adapter ?? null,
    // Where ONNX Runtime's sessions (the training steps and inference measured through it) ran.
    onnxRuntimeProvider: backend.ort ?? 'cpu',
    threads: backend.threads,
    cellWorkers: cellWorkers ?? null,
    nproc: os.cpus().length,
    models,
    torch: torch ?? null,
    demoQuickSeconds: demoSeconds ?? null,
    gicSeconds: gic ?? null,
    defenses: defenses ?? null,
    purification: purification ?? null,
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
    tensorsBefore,
    tensorsAfter: tf.memory().numTensors,
  };
  o.log(`peak RSS ${result.peakRssMiB} MiB; tensors ${tensorsBefore} -> ${result.tensorsAfter}`);
  if (o.jsonPath) writeJsonAtomic(o.jsonPath, result);
  return result;
}
