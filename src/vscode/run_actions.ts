/**
 * The actions of a Past Runs item (its context menu and inline buttons): open its results, reveal its folder in
 * the Explorer, open its results.json, run its job again, delete it after a modal confirmation. A run folder
 * does not record its job file, so the host remembers the job of every run it started (workspace state), and
 * otherwise looks where the default layout puts it (`<job dir>/audit-out/<job name>-<time>`).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';

/** workspaceState key: run folder -> the job file that produced it. */
export const RUN_JOBS_KEY = 'backdoorAudit.runJobs';

/** The run folder an item action was invoked on: a Past Runs item, a folder or results.json Uri. */
export function runDirOf(arg: unknown): string | undefined {
  if (arg instanceof vscode.Uri) return path.basename(arg.fsPath) === 'results.json' ? path.dirname(arg.fsPath) : arg.fsPath;
  const s = (arg as { summary?: { outDir?: unknown } } | undefined)?.summary;
  return typeof s?.outDir === 'string' ? s.outDir : undefined;
}

export function rememberRunJob(state: vscode.Memento, outDir: string, jobPath: string): Thenable<void> {
  const map = { ...state.get<Record<string, string>>(RUN_JOBS_KEY, {}), [path.resolve(outDir)]: path.resolve(jobPath) };
  return state.update(RUN_JOBS_KEY, map);
}

/**
 * The job file of a run: the one remembered, else the default layout's (`<dir>/audit-out/run-<time>` comes from
 * `<dir>/audit.json`, `<dir>/audit-out/<name>-<time>` from `<dir>/<name>.json` or `<name>.audit.json`).
 */
export function jobOfRun(state: vscode.Memento, outDir: string): string | undefined {
  const known = state.get<Record<string, string>>(RUN_JOBS_KEY, {})[path.resolve(outDir)];
  if (known && fs.existsSync(known)) return known;
  const m = /^(.+)-\d{8}-\d{6}$/.exec(path.basename(outDir));
  if (!m || path.basename(path.dirname(outDir)) !== 'audit-out') return undefined;
  const jobDir = path.dirname(path.dirname(outDir));
  const names = m[1] === 'run' ? ['audit.json'] : [`${m[1]}.json`, `${m[1]}.audit.json`];
  return names.map((n) => path.join(jobDir, n)).find((f) => fs.existsSync(f));
}

/**
 * Delete a run folder after a modal confirmation, to the trash where the platform has one. Refused while its
 * job runs, and for a folder without results.json (the item is stale, or the path is not a run).
 */
export async function deleteRun(outDir: string, running: boolean): Promise<boolean> {
  if (running) {
    void vscode.window.showWarningMessage(`Backdoor Audit: the job writing ${path.basename(outDir)} is still running; cancel it first.`);
    return false;
  }
  if (!fs.existsSync(path.join(outDir, 'results.json'))) {
    void vscode.window.showWarningMessage(`Backdoor Audit: ${outDir} holds no results.json; nothing was deleted.`);
    return false;
  }
  const answer = await vscode.window.showWarningMessage(
    `Delete the run folder ${path.basename(outDir)} with its results and purified models?`,
    { modal: true, detail: outDir },
    'Delete',
  );
  if (answer !== 'Delete') return false;
  await vscode.workspace.fs.delete(vscode.Uri.file(outDir), { recursive: true, useTrash: true });
  return true;
}
