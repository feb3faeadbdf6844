/**
 * The results panel: one webview panel per run (keyed by its output folder). It follows a running job
 * live, shows a finished run from its results.json, and comes back after a window reload through the
 * webview serializer. The host keeps the events of a running job so that a panel that (re)loads — hidden
 * and shown again, or restored — gets the whole run replayed after its "ready" handshake.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { RunEvent } from '../shared/run_events';
import type { Results } from '../shared/results';
import { webviewHtml, webviewOptions } from './html';
import type { JobListener, JobRunner, Outcome } from './job_runner';
import { isPanelState, isResults, isViewMessage, type HostMessage, type RunInfo, type ViewMessage } from '../shared/panel_messages';
import { checkWebviewDir, resolveWebviewPath } from './webview_paths';

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
  /**
   * Where files opened on the page's behalf may be: the workspace folders, plus the run folder when the host
   * chose it (a job it ran, which the output setting may put outside the workspace). A folder named only by
   * restored page state gets the workspace folders alone.
   */
  roots: string[];
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

/** The workspace folders: the only places a path from a webview may resolve into (see webview_paths.ts). */
function workspaceRoots(): string[] {
  return (vscode.workspace.workspaceFolders ?? []).filter((f) => f.uri.scheme === 'file').map((f) => f.uri.fsPath);
}

/** A path from a webview, shortened for a message (it may be anything). */
function shown(p: string): string {
  const s = p.replace(/[\u0000-\u001f]/g, '?');
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}

/** How long a shown results page may take to say "ready" before it is loaded again, and how many times. */
const PAGE_SILENCE_MS = 15_000;
const PAGE_RELOADS = 3;

export class ResultsPanels implements vscode.Disposable, vscode.WebviewPanelSerializer {
  private readonly panels = new Map<string, Entry>();
  /** Events of running jobs, by run id, for replay to panels that (re)load. */
  private readonly live = new Map<string, RunEvent[]>();
  private readonly subscription: vscode.Disposable;
  /** The run the user looks at: the last panel shown or focused, or the job started last (the side view follows it). */
  private active?: { run: RunInfo; roots: string[] };
  private readonly activeChanged = new vscode.EventEmitter<void>();
  readonly onDidChangeActiveRun = this.activeChanged.event;

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly runner: JobRunner,
    /** How long a shown page may stay silent before it is loaded again (see `watchForSilence`). */
    private readonly silenceMs = PAGE_SILENCE_MS,
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
      this.setActive(existing.run, existing.roots);
      if (existing.ready && !this.live.has(run.id)) this.sendInit(existing);
      return existing.panel;
    }
    const panel = vscode.window.createWebviewPanel(RESULTS_VIEW_TYPE, run.title, { viewColumn: column, preserveFocus: true }, webviewOptions(this.extensionUri));
    this.adopt(panel, run, [...workspaceRoots(), run.outDir]);
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

  /**
   * The serializer: VS Code hands back a panel it restored after a reload, with the state the page saved.
   * That state is the page's, not the host's: its run folder is used only if it is inside the workspace
   * folders (real paths, so a symlink cannot lead out), or is the folder of a job this window runs.
   */
  async deserializeWebviewPanel(panel: vscode.WebviewPanel, state: unknown): Promise<void> {
    if (!isPanelState(state)) {
      // Nothing to show (a panel saved before it received a run): close it rather than leave it blank.
      panel.dispose();
      return;
    }
    const live = path.isAbsolute(state.run.outDir) && !!this.runner.runningById(state.run.outDir);
    const roots = workspaceRoots();
    const checked = live ? { ok: true as const } : checkWebviewDir(state.run.outDir, roots);
    if (!checked.ok) {
      panel.dispose();
      void vscode.window.showWarningMessage(`Backdoor Audit: a results panel was not restored because its run folder ${shown(state.run.outDir)} was refused: ${checked.reason}. Open the run with "Backdoor Audit: Open Run Results...", on its results.json.`);
      return;
    }
    // Only the checked folder is kept: the id is the host's key for a run (its folder), the title is text.
    const outDir = path.resolve(state.run.outDir);
    const jobPath = state.run.jobPath && checkWebviewDir(path.dirname(state.run.jobPath), roots).ok ? state.run.jobPath : undefined;
    const run: RunInfo = { id: outDir, title: state.run.title.slice(0, 200), outDir, ...(jobPath ? { jobPath } : {}) };
    panel.webview.options = webviewOptions(this.extensionUri);
    this.adopt(panel, run, live ? [...roots, outDir] : roots);
  }

  /** The run the side view shows, with the folders its files may be read from. */
  activeRun(): { run: RunInfo; roots: string[] } | undefined {
    return this.active;
  }

  private setActive(run: RunInfo, roots: string[]): void {
    if (this.active?.run.id === run.id) return;
    this.active = { run, roots };
    this.activeChanged.fire();
  }

  private adopt(panel: vscode.WebviewPanel, run: RunInfo, roots: string[]): void {
    const entry: Entry = { panel, run, ready: false, disposables: [], roots };
    this.panels.set(run.id, entry);
    this.setActive(run, roots);
    panel.iconPath = vscode.Uri.joinPath(this.extensionUri, 'media', 'icon.svg');
    panel.webview.html = webviewHtml(panel.webview, this.extensionUri, 'results', run.title);
    this.watchForSilence(entry);
    entry.disposables.push(
      panel.webview.onDidReceiveMessage((m: unknown) => this.receive(entry, m)),
      panel.onDidChangeViewState((e) => e.webviewPanel.active && this.setActive(entry.run, entry.roots)),
      panel.onDidDispose(() => {
        this.panels.delete(run.id);
        for (const d of entry.disposables) d.dispose();
      }),
    );
  }

  /**
   * A page that is shown and has not said "ready" after `silenceMs` is loaded again (a fresh nonce makes new
   * HTML, which VS Code loads anew), up to PAGE_RELOADS times. Its bundle did not run: in browser-hosted VS Code
   * (code-server) a new webview's first load is sometimes left blank, and reloading the webviews by hand then
   * fills it. A hidden page is not counted: VS Code loads it only when it is shown.
   */
  private watchForSilence(entry: Entry): void {
    let reloads = 0;
    const timer = setInterval(() => {
      if (entry.ready || reloads >= PAGE_RELOADS) {
        clearInterval(timer);
        return;
      }
      if (!entry.panel.visible) return;
      reloads++;
      entry.panel.webview.html = webviewHtml(entry.panel.webview, this.extensionUri, 'results', entry.run.title);
    }, this.silenceMs);
    // The extension host must not stay alive for this timer alone.
    timer.unref?.();
    entry.disposables.push({ dispose: () => clearInterval(timer) });
  }

  /** A path the page asked for, inside the run folder and the allowed roots; refusals are shown, not silent. */
  private fromPage(entry: Entry, rel: string, what: string): string | undefined {
    const r = resolveWebviewPath(entry.run.outDir, rel, entry.roots);
    if (r.ok) return r.path;
    void vscode.window.showWarningMessage(`Backdoor Audit: the results panel asked to open ${what} "${shown(rel)}", which was refused: ${r.reason}.`);
    return undefined;
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
        const file = this.fromPage(entry, m.path, 'the model');
        if (!file) return;
        await vscode.commands.executeCommand('vscode.openWith', vscode.Uri.file(file), inspectorViewType(file));
        return;
      }
      case 'openResultsJson': {
        const file = this.fromPage(entry, 'results.json', 'the file');
        if (file) await vscode.window.showTextDocument(vscode.Uri.file(file), { preview: true });
        return;
      }
      case 'revealOutDir': {
        const dir = checkWebviewDir(run.outDir, entry.roots);
        if (dir.ok) await vscode.commands.executeCommand('revealFileInOS', vscode.Uri.file(dir.path));
        else void vscode.window.showWarningMessage(`Backdoor Audit: the run folder ${shown(run.outDir)} cannot be revealed: ${dir.reason}.`);
        return;
      }
      case 'cancel':
        this.runner.cancel(run.id);
        return;
      case 'action':
      case 'showPanel':
        return;
      case 'copy':
        await vscode.env.clipboard.writeText(m.text);
        void vscode.window.setStatusBarMessage('Backdoor Audit: table copied', 3000);
        return;
      case 'exportCsv': {
        // The dialog starts in the run folder; the user picks the file, so any path they choose is theirs.
        const target = await vscode.window.showSaveDialog({ defaultUri: vscode.Uri.file(path.join(run.outDir, 'results.csv')), filters: { CSV: ['csv'] }, title: 'Export the results table as CSV' });
        if (!target) return;
        await vscode.workspace.fs.writeFile(target, Buffer.from(m.text, 'utf8'));
        void vscode.window.setStatusBarMessage(`Backdoor Audit: wrote ${path.basename(target.fsPath)}`, 3000);
        return;
      }
    }
  }

  private sendInit(entry: Entry): void {
    for (const m of this.initMessages(entry.run, entry.roots)) this.postTo(entry, m);
  }

  /**
   * What a page showing `run` is sent after its "ready": the events so far of a running job, else the run's
   * results.json, read through the same check as the page's requests (a results.json linked from outside the
   * run folder, or a restored folder's from outside the workspace, is not read).
   */
  initMessages(run: RunInfo, roots: string[]): HostMessage[] {
    const live = this.live.get(run.id);
    if (live) return [{ type: 'init', run, running: true }, ...live.map((e): HostMessage => ({ type: 'event', runId: run.id, event: e }))];
    const file = resolveWebviewPath(run.outDir, 'results.json', roots);
    const results = file.ok ? readResults(file.path) : undefined;
    return [{ type: 'init', run, results, running: false }];
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
    this.activeChanged.dispose();
    for (const e of this.panels.values()) e.panel.dispose();
    this.panels.clear();
  }
}
