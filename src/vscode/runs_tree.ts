/**
 * The "Past Runs" view: the jobs running now first (with an inline Cancel and their progress in cells), then
 * every results.json under the workspace (and under the configured output folder when it lies outside), newest
 * first; selecting one opens its results panel.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { Results } from '../shared/results';
import { settings } from './config';
import { readResults } from './panel';
import type { JobListener, JobRunner } from './job_runner';
import type { RunInfo } from '../shared/panel_messages';

export interface RunSummary {
  outDir: string;
  label: string;
  description: string;
  tooltip: string;
  mtime: number;
}

function pct(x: number | null | undefined): string {
  return typeof x === 'number' && Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : x === null ? 'n/a' : '—';
}

/** What a run's tree item says: the model, when, and the best purification (lowest ASR) it found. */
export function summarizeRun(outDir: string, r: Results, mtime: number): RunSummary {
  const ok = r.rows.filter((x) => !x.error && typeof x.asr === 'number');
  const best = ok.reduce<(typeof ok)[number] | undefined>((b, x) => (!b || (x.asr as number) < (b.asr as number) || (x.asr === b.asr && (x.acc ?? 0) > (b.acc ?? 0)) ? x : b), undefined);
  const model = path.basename(r.model.path);
  const when = new Date(mtime);
  const stamp = `${when.getFullYear()}-${String(when.getMonth() + 1).padStart(2, '0')}-${String(when.getDate()).padStart(2, '0')} ${String(when.getHours()).padStart(2, '0')}:${String(when.getMinutes()).padStart(2, '0')}`;
  const description = best
    ? `ASR ${pct(r.baseline.asr)} → ${pct(best.asr)} (${best.defense}${best.gic ? '+GIC' : ''} on ${best.aux})`
    : `ACC ${pct(r.baseline.acc)} · ASR ${pct(r.baseline.asr)}`;
  const failed = r.rows.length - ok.length;
  const tooltip = [
    `${model} (${r.model.arch}, ${r.model.format})`,
    `run folder: ${outDir}`,
    `finished: ${stamp} on ${r.backend?.name ?? '?'}`,
    `baseline: ACC ${pct(r.baseline.acc)}, ASR ${pct(r.baseline.asr)}`,
    `${r.rows.length} cells${failed ? `, ${failed} failed` : ''}`,
  ].join('\n');
  return { outDir, label: `${model} · ${stamp}`, description, tooltip, mtime };
}

/** results.json files under `dir`, at most `depth` folders down (the output folder holds one folder per run). */
export function scanDir(dir: string, depth = 2): string[] {
  const out: string[] = [];
  const walk = (d: string, left: number) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.isFile() && e.name === 'results.json') out.push(path.join(d, e.name));
      else if (e.isDirectory() && left > 0 && e.name !== 'node_modules' && !e.name.startsWith('.')) walk(path.join(d, e.name), left - 1);
    }
  };
  walk(dir, depth);
  return out;
}

export class RunItem extends vscode.TreeItem {
  constructor(readonly summary: RunSummary) {
    super(summary.label, vscode.TreeItemCollapsibleState.None);
    this.description = summary.description;
    this.tooltip = summary.tooltip;
    this.contextValue = 'backdoorAudit.run';
    this.iconPath = new vscode.ThemeIcon('beaker');
    this.resourceUri = vscode.Uri.file(summary.outDir);
    this.command = { command: 'backdoorAudit.openRun', title: 'Open Results', arguments: [vscode.Uri.file(summary.outDir)] };
  }
}

/** A job running now: its panel on click, Cancel inline (contextValue `backdoorAudit.runningJob`). */
export class RunningItem extends vscode.TreeItem {
  constructor(
    readonly run: RunInfo,
    progress: { rows: number; cells?: number },
  ) {
    super(run.title, vscode.TreeItemCollapsibleState.None);
    this.description = `running · ${progress.rows}/${progress.cells ?? '?'} cells`;
    this.tooltip = `${run.title}\nrun folder: ${run.outDir}${run.jobPath ? `\njob: ${run.jobPath}` : ''}`;
    this.contextValue = 'backdoorAudit.runningJob';
    this.iconPath = new vscode.ThemeIcon('sync~spin');
    this.id = `running:${run.id}`;
    this.command = { command: 'backdoorAudit.openRun', title: 'Open Results', arguments: [vscode.Uri.file(run.outDir)] };
  }
}

export type RunsTreeItem = RunItem | RunningItem;

export class RunsTree implements vscode.TreeDataProvider<RunsTreeItem>, vscode.Disposable {
  private readonly changed = new vscode.EventEmitter<RunsTreeItem | undefined | void>();
  readonly onDidChangeTreeData = this.changed.event;
  private readonly watcher: vscode.FileSystemWatcher;
  /** Cells done and planned per running job (from its events). */
  private readonly progress = new Map<string, { rows: number; cells?: number }>();
  private readonly subscription?: vscode.Disposable;

  constructor(private readonly runner?: JobRunner) {
    const l: JobListener = {
      started: (run) => {
        this.progress.set(run.id, { rows: 0 });
        this.refresh();
      },
      event: (run, e) => {
        const p = this.progress.get(run.id);
        if (!p) return;
        if (e.type === 'started') p.cells = e.cells;
        else if (e.type === 'row') p.rows++;
        else return;
        this.refresh();
      },
      ended: (run) => {
        this.progress.delete(run.id);
        this.refresh();
      },
    };
    this.subscription = runner?.listen(l);
    // A run's results.json appears at the end of the job (atomic rename), so a create event means a new run.
    this.watcher = vscode.workspace.createFileSystemWatcher('**/results.json');
    this.watcher.onDidCreate(() => this.refresh());
    this.watcher.onDidDelete(() => this.refresh());
    this.watcher.onDidChange(() => this.refresh());
  }

  refresh(): void {
    this.changed.fire();
  }

  getTreeItem(e: RunsTreeItem): vscode.TreeItem {
    return e;
  }

  async getChildren(parent?: RunsTreeItem): Promise<RunsTreeItem[]> {
    if (parent) return [];
    const running = (this.runner?.runningRuns() ?? []).map((r) => new RunningItem(r, this.progress.get(r.id) ?? { rows: 0 }));
    // A running job's folder may already hold an earlier results.json: list the run once, as running.
    const busy = new Set(running.map((r) => path.resolve(r.run.outDir)));
    return [...running, ...(await this.runs()).filter((s) => !busy.has(path.resolve(s.outDir))).map((s) => new RunItem(s))];
  }

  async runs(): Promise<RunSummary[]> {
    const files = new Set<string>();
    for (const u of await vscode.workspace.findFiles('**/results.json', '**/node_modules/**', 500)) files.add(u.fsPath);
    const out = settings().outputFolder.trim();
    if (out && path.isAbsolute(out)) for (const f of scanDir(out)) files.add(f);
    const runs: RunSummary[] = [];
    for (const f of files) {
      const r = readResults(f);
      if (!r) continue;
      let mtime = 0;
      try {
        mtime = fs.statSync(f).mtimeMs;
      } catch {
        continue;
      }
      runs.push(summarizeRun(path.dirname(f), r, mtime));
    }
    return runs.sort((a, b) => b.mtime - a.mtime);
  }

  dispose(): void {
    this.subscription?.dispose();
    this.watcher.dispose();
    this.changed.dispose();
  }
}
