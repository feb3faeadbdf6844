/**
 * The status bar item, shown only while jobs run: that they run and what they compute with, as the job process
 * reports it — the tensor backend that trains (GPU through @tensorflow/tfjs-node-gpu when it is installed, else
 * WebAssembly on the CPU) and what evaluates ACC/ASR/RA (ONNX Runtime's CPU kernels beside a CPU backend, where it
 * loads). Before a job has reported, it names what a job would most likely get. It is not a progress display: the
 * cancellable notification counts cells and the results panel shows them. Clicking shows the log.
 */
import * as vscode from 'vscode';
import { settings } from './config';
import type { JobListener } from './job_runner';
import type { RunEvent } from '../shared/run_events';

/** Whether a package resolves from the extension, without loading it (loading libtensorflow takes seconds). */
export type Resolves = (id: string) => boolean;

export const defaultResolves: Resolves = (id) => {
  try {
    require.resolve(id);
    return true;
  } catch {
    return false;
  }
};

/**
 * The backend a job will most likely get, before any job has reported the one it really got. WebGPU is not
 * guessed: the webgpu package resolving says nothing about an adapter, and asking Dawn belongs in a job process.
 */
export function expectedBackend(device: 'auto' | 'gpu' | 'cpu', resolves: Resolves): string {
  if (device !== 'cpu' && resolves('@tensorflow/tfjs-node-gpu')) return 'tensorflow-gpu';
  if (resolves('@tensorflow/tfjs-node')) return 'tensorflow';
  return 'wasm';
}

/** Whether a tensor backend is one of the CPU backends beside which the job process evaluates with ONNX Runtime. */
const evaluatesWithOrt = (backend: string) => backend === 'wasm' || backend === 'cpu';

/**
 * What will most likely evaluate beside `backend` (results.json's `backend.evaluation`): ONNX Runtime on the CPU
 * backends where onnxruntime-node resolves (the packaged extension carries it), else the backend itself.
 */
export function expectedEvaluation(backend: string, resolves: Resolves): string {
  return evaluatesWithOrt(backend) && resolves('onnxruntime-node') ? 'onnxruntime-cpu' : backend;
}

/** A training backend and, when something else evaluates, that too: "CPU (WebAssembly + ONNX Runtime)". */
export function backendLabel(name: string, evaluation?: string): string {
  const ort = evaluation === 'onnxruntime-cpu' && name !== evaluation;
  // ONNX Runtime on its WebGPU provider computes the steps and the evaluation; the wasm backend only the glue.
  if (evaluation === 'onnxruntime-webgpu') return 'GPU (ONNX Runtime WebGPU)';
  switch (name) {
    case 'tensorflow-gpu':
      return 'GPU (CUDA)';
    case 'webgpu':
      return 'GPU (WebGPU)';
    case 'tensorflow':
      return 'CPU (TensorFlow)';
    case 'wasm':
      return ort ? 'CPU (WebAssembly + ONNX Runtime)' : 'CPU (WebAssembly)';
    case 'cpu':
      return ort ? 'CPU (JavaScript + ONNX Runtime)' : 'CPU (JavaScript)';
    default:
      return name;
  }
}

const ENGINE_NAMES: Record<string, string> = {
  'tensorflow-gpu': 'TensorFlow on the GPU (CUDA)',
  webgpu: 'the GPU through WebGPU (Dawn)',
  tensorflow: 'TensorFlow on the CPU',
  wasm: 'WebAssembly',
  cpu: 'plain JavaScript',
  'onnxruntime-cpu': 'ONNX Runtime (CPU)',
  'onnxruntime-webgpu': 'ONNX Runtime on the GPU (WebGPU)',
};
const engineName = (n: string) => ENGINE_NAMES[n] ?? n;

/** What the job process reported: the `started` event's backend, then the `baseline` event's evaluation. */
interface Reported {
  name: string;
  evaluation?: string;
}

export class BackendStatus implements vscode.Disposable, JobListener {
  private readonly item: vscode.StatusBarItem;
  /** What the last job process reported (`started`, `baseline`, `done`); it wins over the guess. */
  private reported?: Reported;
  private running = new Set<string>();

  constructor(private readonly resolves: Resolves = defaultResolves) {
    this.item = vscode.window.createStatusBarItem('backdoorAudit.backend', vscode.StatusBarAlignment.Right, 100);
    this.item.name = 'Backdoor Audit Backend';
    this.item.command = 'backdoorAudit.showLog';
    this.update();
  }

  started(run: { id: string; title: string }): void {
    this.running.add(run.id);
    this.update();
  }

  event(_run: { id: string }, e: RunEvent): void {
    if (e.type === 'started') this.reported = { name: e.backend };
    // The baseline is the job's first evaluation: the job process names what computed it.
    if (e.type === 'baseline' && e.evaluation && this.reported) this.reported = { ...this.reported, evaluation: e.evaluation };
    if (e.type === 'done') this.reported = { name: e.results.backend.name, evaluation: e.results.backend.evaluation ?? this.reported?.evaluation };
    this.update();
  }

  ended(run: { id: string }): void {
    this.running.delete(run.id);
    this.update();
  }

  update(): void {
    const s = settings();
    const backend = this.reported?.name ?? expectedBackend(s.device, this.resolves);
    // Until a job names what evaluated, the job process's likely choice (it loads ONNX Runtime as the CLI does).
    const evaluation = this.reported?.evaluation ?? expectedEvaluation(backend, this.resolves);
    const gpu = backend === 'tensorflow-gpu' || backend === 'webgpu';
    const label = backendLabel(backend, evaluation);
    const n = this.running.size;
    this.item.text = `$(${gpu ? 'circuit-board' : 'server-process'}) Backdoor Audit: ${n > 1 ? `${n} jobs` : 'a job'} on ${label}`;
    const what = evaluation === backend ? `train and evaluate on ${engineName(backend)}` : `train on ${engineName(backend)} and evaluate with ${engineName(evaluation)}`;
    const known = this.reported ? (this.reported.evaluation ? 'as the last job reported' : 'as the last job reported; evaluation expected') : 'expected';
    this.item.tooltip = `Backdoor Audit jobs ${what} (${known}); device setting: ${s.device}.${gpu ? '' : ' Backdoor Audit: Check Environment says why no GPU backend loads.'} The notification shows the progress; click for the log.`;
    if (n > 0) this.item.show();
    else this.item.hide();
  }

  dispose(): void {
    this.item.dispose();
  }
}
