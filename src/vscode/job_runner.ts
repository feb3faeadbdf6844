/**
 * Runs jobs off the extension host: one job process per job (dist/job-process.js, see jobProcess.ts), events
 * forwarded to listeners (the results panel, the status bar, the runs view) and to the Output channel, a
 * cancellable notification through window.withProgress, and one job per model at a time. A job process that
 * crashes or runs out of memory is a failed job with its last stderr lines; the host goes on.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { RunEvent } from '../shared/run_events';
import type { Results } from '../shared/results';
import { jobModelPath } from './job_spec';
import { removeProcessStaging } from '../engine/jobs/staging';
import type { JobHandle } from './job_process';
import type { RunInfo } from '../shared/panel_messages';
import { levelOfJobMessage, logLine, type LogLevel } from './log';

export type JobFactory = (req: RunRequest) => JobHandle;

export type Outcome =
  | { status: 'done'; results: Results; resultsPath: string }
  | { status: 'failed'; error: string }
  | { status: 'cancelled' }
  /** Not started: another job for the same model runs, the workspace is untrusted, or the job file is unreadable. */
  | { status: 'refused'; reason: string };

export interface JobListener {
  started?(run: RunInfo): void;
  event?(run: RunInfo, e: RunEvent): void;
  ended?(run: RunInfo, outcome: Outcome): void;
}

export interface RunRequest {
  jobPath: string;
  outDir: string;
  device?: 'auto' | 'gpu' | 'cpu';
  title?: string;
  /** Size limits of the model and data files (MB, 0 = no limit); the engine's defaults when absent. */
  limits?: { maxModelMB?: number; maxDataMB?: number };
}

/** How long a cancelled job gets to reach a batch boundary before its process is terminated. */
export const CANCEL_GRACE_MS = 30_000;

interface Running {
  run: RunInfo;
  worker: JobHandle;
  cancel(): void;
}

export class JobRunner implements vscode.Disposable {
  private readonly byModel = new Map<string, Running>();
  private readonly listeners = new Set<JobListener>();

  constructor(
    private readonly log: vscode.LogOutputChannel | vscode.OutputChannel,
    private readonly makeWorker: JobFactory,
  ) {}

  listen(l: JobListener): vscode.Disposable {
    this.listeners.add(l);
    return { dispose: () => this.listeners.delete(l) };
  }

  /** The running job whose output folder (run id) is `id`, if any. */
  runningById(id: string): RunInfo | undefined {
    for (const r of this.byModel.values()) if (r.run.id === id) return r.run;
    return undefined;
  }

  /** The jobs running now, in start order. */
  runningRuns(): RunInfo[] {
    return [...this.byModel.values()].map((r) => r.run);
  }

  isModelBusy(modelPath: string): boolean {
    return this.byModel.has(modelKey(modelPath));
  }

  cancel(runId: string): boolean {
    for (const r of this.byModel.values()) {
      if (r.run.id === runId) {
        r.cancel();
        return true;
      }
    }
    return false;
  }

  private line(s: string, level: LogLevel = 'info'): void {
    logLine(this.log, level, s);
  }

  private emit<K extends keyof JobListener>(k: K, ...args: Parameters<NonNullable<JobListener[K]>>): void {
    for (const l of [...this.listeners]) {
      try {
        (l[k] as ((...a: unknown[]) => void) | undefined)?.(...args);
      } catch (e) {
        // A failing listener (a disposed panel) must not stop the job or the other listeners.
        this.line(`[listener] ${(e as Error).message}`, 'error');
      }
    }
  }

  async run(req: RunRequest): Promise<Outcome> {
    if (!vscode.workspace.isTrusted) {
      // package.json already keeps the extension out of untrusted workspaces; this guards direct API calls.
      return this.refuse('Backdoor Audit runs jobs only in trusted workspaces.');
    }
    let job: unknown;
    try {
      job = JSON.parse(fs.readFileSync(req.jobPath, 'utf8'));
    } catch (e) {
      return this.refuse(`Cannot read the job file ${path.basename(req.jobPath)}: ${(e as Error).message.split('\n')[0]}`);
    }
    const model = jobModelPath(req.jobPath, job) ?? req.jobPath;
    const key = modelKey(model);
    const busy = this.byModel.get(key);
    if (busy) {
      return this.refuse(`A job for ${path.basename(model)} is already running (${busy.run.title}). Wait for it or cancel it first.`);
    }
    const run: RunInfo = { id: req.outDir, title: req.title ?? `${path.basename(model)} — ${path.basename(req.jobPath)}`, outDir: req.outDir, jobPath: req.jobPath };
    let worker: JobHandle;
    try {
      worker = this.makeWorker(req);
    } catch (e) {
      return this.refuse(`Cannot start the job process: ${(e as Error).message.split('\n')[0]}`);
    }
    const pid = worker.pid;
    let cancelTimer: ReturnType<typeof setTimeout> | undefined;
    let cancelRequested = false;
    const entry: Running = {
      run,
      worker,
      cancel: () => {
        if (cancelRequested) return;
        cancelRequested = true;
        this.line(`[${run.title}] cancelling: stopping at the next batch`);
        worker.postMessage({ type: 'cancel' });
        // A job stuck inside one long kernel still ends (SIGTERM, then SIGKILL); the runner's atomic writes leave
        // nothing partial.
        cancelTimer = setTimeout(() => void worker.terminate(), CANCEL_GRACE_MS);
      },
    };
    this.byModel.set(key, entry);
    this.line(`[${run.title}] job ${req.jobPath} -> ${req.outDir}`);
    this.emit('started', run);

    let outcome: Outcome;
    try {
      outcome = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: `Backdoor Audit: ${run.title}`, cancellable: true },
        (progress, token) =>
          new Promise<Outcome>((resolve) => {
            let ended = false;
            let cells = 0;
            let rows = 0;
            let lastStage = '';
            const finish = (o: Outcome) => {
              if (ended) return;
              ended = true;
              resolve(o);
            };
            token.onCancellationRequested(() => entry.cancel());
            worker.on('message', (m: RunEvent) => {
              if (ended) return;
              this.logEvent(run, m, lastStage);
              if (m.type === 'progress') lastStage = m.stage;
              this.emit('event', run, m);
              switch (m.type) {
                case 'started':
                  cells = m.cells;
                  progress.report({ message: `${m.cells} cells on ${m.backend}` });
                  break;
                case 'progress':
                  progress.report({ message: `${rows}/${cells || '?'} · ${m.stage} ${m.done}/${m.total}` });
                  break;
                case 'row':
                  rows++;
                  progress.report({ increment: cells ? 100 / cells : undefined, message: `${rows}/${cells || '?'} · ${m.row.aux}/${m.row.defense}${m.row.gic ? '+GIC' : ''} done` });
                  break;
                case 'done':
                  finish({ status: 'done', results: m.results, resultsPath: m.resultsPath });
                  break;
                case 'failed':
                  finish({ status: 'failed', error: m.error });
                  break;
                case 'cancelled':
                  finish({ status: 'cancelled' });
                  break;
              }
            });
            worker.on('error', (e: Error) => finish({ status: 'failed', error: `the job process failed: ${e.message}` }));
            worker.on('exit', (_code: number | null, _signal: NodeJS.Signals | null, describe: string) => finish(cancelRequested ? { status: 'cancelled' } : { status: 'failed', error: describe }));
            worker.postMessage({ type: 'run', jobPath: req.jobPath, outDir: req.outDir, device: req.device, ...(req.limits ? { limits: req.limits } : {}) });
          }),
      );
    } finally {
      if (cancelTimer) clearTimeout(cancelTimer);
      this.byModel.delete(key);
      // A job process that was killed (cancel grace exceeded) or crashed never ran its own cleanup: once it has
      // stopped, remove its staging folder (outputs not moved in; the out dir keeps what it had).
      void Promise.resolve(worker.terminate()).then(() => {
        if (typeof pid === 'number' && pid > 0) {
          const removed = removeProcessStaging(path.dirname(path.resolve(req.outDir)), pid);
          if (removed.length) this.line(`[${run.title}] removed the stopped job process's staging folder ${removed.join(', ')}`);
        }
      });
    }
    if (outcome.status !== 'done') removeIfEmpty(req.outDir);
    this.line(`[${run.title}] ${outcome.status === 'failed' ? `failed: ${outcome.error}` : outcome.status}`, outcome.status === 'failed' ? 'error' : 'info');
    this.emit('ended', run, outcome);
    return outcome;
  }

  private refuse(reason: string): Outcome {
    this.line(reason, 'warn');
    return { status: 'refused', reason };
  }

  private logEvent(run: RunInfo, e: RunEvent, lastStage: string): void {
    const p = `[${run.title}]`;
    switch (e.type) {
      case 'started':
        this.line(`${p} started: ${e.cells} cells, backend ${e.backend} (${e.threads} thread${e.threads === 1 ? '' : 's'})`);
        break;
      case 'progress':
        // Progress arrives per batch; the log keeps one line per stage.
        if (e.stage !== lastStage) this.line(`${p} ${e.stage}${e.message ? `: ${e.message}` : ''}`);
        break;
      case 'log':
        this.line(`${p} ${e.message}`, levelOfJobMessage(e.message));
        break;
      case 'baseline':
        this.line(`${p} baseline: ACC ${pct(e.baseline.acc)} ASR ${pct(e.baseline.asr)} RA ${pct(e.baseline.ra)}`);
        break;
      case 'row': {
        const r = e.row;
        const what = `${r.aux}/${r.defense}${r.gic ? ' +GIC' : ''}`;
        if (r.error) this.line(`${p} ${what}: failed: ${r.error}`, 'warn');
        else this.line(`${p} ${what}: ACC ${pct(r.acc)} ASR ${pct(r.asr)} RA ${pct(r.ra)} DER ${pct(r.der)} (${r.seconds.toFixed(1)} s)`);
        break;
      }
      case 'gic':
        this.line(`${p} GIC on ${e.entry.aux}: max perturbation ${e.entry.maxPerturbation.toFixed(3)} (delta ${e.entry.delta})`);
        break;
      case 'done':
        this.line(`${p} results: ${e.resultsPath}`);
        break;
      case 'failed':
      case 'cancelled':
      case 'embedding':
        break;
    }
  }

  dispose(): void {
    for (const r of this.byModel.values()) void r.worker.terminate();
    this.byModel.clear();
    this.listeners.clear();
  }
}

function pct(x: number | null | undefined): string {
  return typeof x === 'number' ? `${(x * 100).toFixed(1)}%` : x === null ? 'n/a' : '—';
}

/** Case-insensitive on Windows and macOS file systems would be kinder, but a resolved path is what we know. */
function modelKey(p: string): string {
  return path.resolve(p);
}

/** A cancelled or failed run leaves no folder behind if the runner wrote nothing into it. */
function removeIfEmpty(dir: string): void {
  try {
    if (fs.readdirSync(dir).length === 0) fs.rmdirSync(dir);
  } catch {
    // Missing or not empty: leave it.
  }
}
