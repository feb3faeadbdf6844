/**
 * The status bar item, shown only while jobs run: that they run and on which tensor backend (GPU through
 * @tensorflow/tfjs-node-gpu when it is installed, else WebAssembly on the CPU). It is not a progress display:
 * the cancellable notification counts cells and the results panel shows them, so one place says how far a job
 * is. Clicking shows the log.
 */
import * as vscode from 'vscode';
import { settings } from './config';
import type { JobListener } from './job_runner';

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

/** The backend a job will most likely get, before any job has reported the one it really got. */
export function expectedBackend(device: 'auto' | 'gpu' | 'cpu', resolves: Resolves): string {
  if (device !== 'cpu' && resolves('@tensorflow/tfjs-node-gpu')) return 'tensorflow-gpu';
  if (resolves('@tensorflow/tfjs-node')) return 'tensorflow';
  return 'wasm';
}

export function backendLabel(name: string): string {
  switch (name) {
    case 'tensorflow-gpu':
      return 'GPU (CUDA)';
    case 'tensorflow':
      return 'CPU (TensorFlow)';
    case 'wasm':
      return 'CPU (WebAssembly)';
    case 'cpu':
      return 'CPU (JavaScript)';
    default:
      return name;
  }
}

export class BackendStatus implements vscode.Disposable, JobListener {
  private readonly item: vscode.StatusBarItem;
  /** The backend the last job reported (`started` event); it wins over the guess. */
  private reported?: string;
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

  event(_run: { id: string }, e: { type: string; backend?: string }): void {
    if (e.type === 'started' && e.backend) {
      this.reported = e.backend;
      this.update();
    }
  }

  ended(run: { id: string }): void {
    this.running.delete(run.id);
    this.update();
  }

  update(): void {
    const s = settings();
    const backend = this.reported ?? expectedBackend(s.device, this.resolves);
    const gpu = backend === 'tensorflow-gpu';
    const label = backendLabel(backend);
    const n = this.running.size;
    this.item.text = `$(${gpu ? 'circuit-board' : 'server-process'}) Backdoor Audit: ${n > 1 ? `${n} jobs` : 'a job'} on ${label}`;
    this.item.tooltip = `Backdoor Audit runs ${n === 1 ? 'a job' : `${n} jobs`} on ${label}${this.reported ? '' : ' (expected)'}; device setting: ${s.device}.${gpu ? '' : ' Install @tensorflow/tfjs-node-gpu for CUDA.'} The notification shows the progress; click for the log.`;
    if (n > 0) this.item.show();
    else this.item.hide();
  }

  dispose(): void {
    this.item.dispose();
  }
}
