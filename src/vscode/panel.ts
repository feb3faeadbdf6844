/**
 * The results panel: one webview panel per run (keyed by its output folder). It follows a running job
 * live, shows a finished run from its results.json, and comes back after a window reload through the
 * webview serializer. The host keeps the events of a running job so that a panel that (re)loads — hidden
 * and shown again, or restored — gets the whole run replayed after its "ready" handshake.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { RunEvent } from '../protocol';
import type { Results } from '../engine/jobs/results';
import { webviewHtml, webviewOptions } from './html';
import type { JobListener, JobRunner, Outcome } from './jobRunner';
import { isPanelState, isResults, isViewMessage, type HostMessage, type RunInfo, type ViewMessage } from './panelProtocol';

export const RESULTS_VIEW_TYPE = 'backdoorAudit.results';
export const MODEL_EDITOR_VIEW_TYPE = 'backdoorAudit.modelInspector';

/**
 * The inspector's view type for a file: .pt, .pth and model.json are registered under a second view type
 * with priority "option" (other tools claim them), the rest under the default one.
 */
export function inspectorViewType(file: string): string {
  return /\.(pt|pth)$/i.test(file) || path.basename(file) === 'model.json' ? `${MODEL_EDITOR_VIEW_TYPE}.option` : MODEL_EDITOR_VIEW_TYPE;
}

interface Entry {
  panel: vscode.WebviewPanel;
  run: RunInfo;
  ready: boolean;
  disposables: vscode.Disposable[];
}

/** Reads and checks a results.json; undefined when missing or not ours. */
export function readResults(file: string): Results | undefined {
  try {
    const v: unknown = JSON.parse(fs.readFileSync(file, 'utf8'));
    return isResults(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/**
 * `rel` (from results.json or the webview) resolved inside `outDir`; undefined when it escapes the folder.
 * The webview is less trusted than the host: it must not make the host open arbitrary files.
 */
export function resolveInside(outDir: string, rel: string): string | undefined {
  if (path.isAbsolute(rel)) return undefined;
  const abs = path.resolve(outDir, rel);
  const r = path.relative(path.resolve(outDir), abs);
  return r && !r.startsWith('..') && !path.isAbsolute(r) ? abs : undefined;
}

export class ResultsPanels implements vscode.Disposable, vscode.WebviewPanelSerializer {
  private readonly panels = new Map<string, Entry>();
  /** Events of running jobs, by run id, for replay to panels that (re)load. */
  private readonly live = new Map<string, RunEvent[]>();
  private readonly subscription: vscode.Disposable;

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly runner: JobRunner,
  ) {
    const l: JobListener = {
      started: (run) => {
        this.live.set(run.id, []);
        this.show(run);
      },
      event: (run, e) => {
        this.live.get(run.id)?.push(e);
        this.post(run.id, { type: 'event', runId: run.id, event: e });
      },
      ended: (run, o: Outcome) => {
        this.live.delete(run.id);
        // A worker that died without a terminal event still has to end the panel's "running" state.
        if (o.status === 'failed' || o.status === 'cancelled') {
          const e: RunEvent = o.status === 'failed' ? { type: 'failed', error: o.error, exitCode: 1 } : { type: 'cancelled' };
          this.post(run.id, { type: 'event', runId: run.id, event: e });
        }
      },
    };
    this.subscription = runner.listen(l);
  }

  /** Opens (or reveals) the panel of a run: live if its job runs, else from results.json in its folder. */
  show(run: RunInfo, column: vscode.ViewColumn = vscode.ViewColumn.Beside): vscode.WebviewPanel {
    const existing = this.panels.get(run.id);
    if (existing) {
      existing.panel.reveal(column, true);
      if (existing.ready && !this.live.has(run.id)) this.sendInit(existing);
      return existing.panel;
    }
    const panel = vscode.window.createWebviewPanel(RESULTS_VIEW_TYPE, run.title, { viewColumn: column, preserveFocus: true }, webviewOptions(this.extensionUri));
    this.adopt(panel, run);
    return panel;
  }

  /** Opens the run whose results.json is in `outDir`. */
  openRun(outDir: string): boolean {
    const results = readResults(path.join(outDir, 'results.json'));
    if (!results && !this.runner.runningById(outDir)) return false;
    const title = results ? `${path.basename(results.model.path)} — ${path.basename(outDir)}` : path.basename(outDir);
    this.show({ id: outDir, title, outDir });
    return true;
  }

  /** The serializer: VS Code hands back a panel it restored after a reload, with the state the page saved. */
  async deserializeWebviewPanel(panel: vscode.WebviewPanel, state: unknown): Promise<void> {
    if (!isPanelState(state)) {
      // Nothing to show (a panel saved before it received a run): close it rather than leave it blank.
      panel.dispose();
      return;
    }
    panel.webview.options = webviewOptions(this.extensionUri);
    this.adopt(panel, state.run);
  }

  private adopt(panel: vscode.WebviewPanel, run: RunInfo): void {
    const entry: Entry = { panel, run, ready: false, disposables: [] };
    this.panels.set(run.id, entry);
    panel.iconPath = vscode.Uri.joinPath(this.extensionUri, 'media', 'icon.svg');
    panel.webview.html = webviewHtml(panel.webview, this.extensionUri, 'results', run.title);
    entry.disposables.push(
      panel.webview.onDidReceiveMessage((m: unknown) => this.receive(entry, m)),
      panel.onDidDispose(() => {
        this.panels.delete(run.id);
        for (const d of entry.disposables) d.dispose();
      }),
    );
  }

  private receive(entry: Entry, m: unknown): void {
    if (!isViewMessage(m)) return;
    void this.handle(entry, m);
  }

  private async handle(entry: Entry, m: ViewMessage): Promise<void> {
    const { run } = entry;
    switch (m.type) {
      case 'ready': {
        entry.ready = true;
        this.sendInit(entry);
        return;
      }
      case 'openModel': {
        const file = resolveInside(run.outDir, m.path);
        if (!file || !fs.existsSync(file)) {
          void vscode.window.showWarningMessage(`The purified model ${m.path} is not in ${run.outDir}.`);
          return;
        }
        const uri = vscode.Uri.file(file);
        await vscode.commands.executeCommand('vscode.openWith', uri, inspectorViewType(file));
        return;
      }
      case 'openResultsJson': {
        const file = path.join(run.outDir, 'results.json');
        if (fs.existsSync(file)) await vscode.window.showTextDocument(vscode.Uri.file(file), { preview: true });
        return;
      }
      case 'revealOutDir':
        if (fs.existsSync(run.outDir)) await vscode.commands.executeCommand('revealFileInOS', vscode.Uri.file(run.outDir));
        return;
      case 'cancel':
        this.runner.cancel(run.id);
        return;
      case 'action':
        return;
    }
  }

  private sendInit(entry: Entry): void {
    const { run } = entry;
    const live = this.live.get(run.id);
    if (live) {
      this.postTo(entry, { type: 'init', run, running: true });
      for (const e of live) this.postTo(entry, { type: 'event', runId: run.id, event: e });
      return;
    }
    const results = readResults(path.join(run.outDir, 'results.json'));
    this.postTo(entry, { type: 'init', run, results, running: false });
  }

  private post(runId: string, m: HostMessage): void {
    const e = this.panels.get(runId);
    if (e?.ready) this.postTo(e, m);
  }

  private postTo(e: Entry, m: HostMessage): void {
    void e.panel.webview.postMessage(m);
  }

  dispose(): void {
    this.subscription.dispose();
    for (const e of this.panels.values()) e.panel.dispose();
    this.panels.clear();
  }
}
