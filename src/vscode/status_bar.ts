/**
 * The status bar item: which tensor backend jobs run on (GPU through @tensorflow/tfjs-node-gpu when it is
 * installed, else WebAssembly on the CPU) and, while jobs run, how far they are. Clicking shows the log.
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
  private running = new Map<string, string>();

  constructor(private readonly resolves: Resolves = defaultResolves) {
    this.item = vscode.window.createStatusBarItem('backdoorAudit.backend', vscode.StatusBarAlignment.Right, 100);
    this.item.name = 'Backdoor Audit Backend';
    this.item.command = 'backdoorAudit.showLog';
    this.update();
    this.item.show();
  }

  started(run: { id: string; title: string }): void {
    this.running.set(run.id, 'starting');
    this.update();
  }

  event(run: { id: string }, e: { type: string; backend?: string; stage?: string; done?: number; total?: number }): void {
    if (e.type === 'started' && e.backend) this.reported = e.backend;
    if (e.type === 'progress') this.running.set(run.id, `${e.stage} ${e.done}/${e.total}`);
    this.update();
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
    if (this.running.size > 0) {
      const first = [...this.running.values()][0];
      this.item.text = `$(sync~spin) ${label}: ${this.running.size > 1 ? `${this.running.size} jobs` : first}`;
    } else {
      this.item.text = `$(${gpu ? 'circuit-board' : 'server-process'}) ${label}`;
    }
    this.item.tooltip = `Backdoor Audit runs jobs on ${label}${this.reported ? '' : ' (expected)'}; device setting: ${s.device}.${gpu ? '' : ' Install @tensorflow/tfjs-node-gpu for CUDA.'} Click for the log.`;
  }

  dispose(): void {
    this.item.dispose();
  }
}
