/**
 * The commands: model actions (Explorer context, editor title, inspector buttons, palette), running an
 * existing audit.json, marking auxiliary data, and opening past runs. Each command accepts the Uri VS Code
 * passes from a menu and, from the palette, asks for what it needs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { settings } from './config';
import type { JobRunner, Outcome } from './job_runner';
import { jobModelPath, runOutDir } from './job_spec';
import { inspectorViewType, type ResultsPanels } from './panel';
import type { RunsTree } from './runs_tree';
import { AUX_SOURCES_KEY, MODEL_GLOB, SetupFlow, type FlowKind } from './setup_flow';
import { doctorSummary, formatDoctor, runDoctorProcess } from './check_environment';
import { prepareDemo } from './demo';
import { deleteRun, jobOfRun, rememberRunJob, runDirOf } from './run_actions';
import { logLine } from './log';

export interface Services {
  runner: JobRunner;
  panels: ResultsPanels;
  runs: RunsTree;
  log: vscode.OutputChannel | vscode.LogOutputChannel;
  state: vscode.Memento;
}

/** Every command id this module registers; package.json contributes exactly these (checked by a unit test). */
export const COMMANDS = [
  'backdoorAudit.purify',
  'backdoorAudit.evaluate',
  'backdoorAudit.calibrate',
  'backdoorAudit.useAsAux',
  'backdoorAudit.runJob',
  'backdoorAudit.openRun',
  'backdoorAudit.refreshRuns',
  'backdoorAudit.showLog',
  'backdoorAudit.openModelInspector',
  'backdoorAudit.checkEnvironment',
  'backdoorAudit.runDemo',
  'backdoorAudit.revealRun',
  'backdoorAudit.openRunResultsJson',
  'backdoorAudit.rerun',
  'backdoorAudit.deleteRun',
  'backdoorAudit.cancelJob',
] as const;

const EXCLUDE = '{**/node_modules/**,**/.git/**}';

function asUri(arg: unknown): vscode.Uri | undefined {
  return arg instanceof vscode.Uri ? arg : undefined;
}

async function pickFile(glob: string, placeHolder: string): Promise<vscode.Uri | undefined> {
  const files = await vscode.workspace.findFiles(glob, EXCLUDE, 500);
  if (files.length === 0) {
    void vscode.window.showInformationMessage(`No matching files in the workspace (${glob}).`);
    return undefined;
  }
  if (files.length === 1) return files[0];
  const pick = await vscode.window.showQuickPick(
    files.map((u) => ({ label: vscode.workspace.asRelativePath(u, false), uri: u })),
    { placeHolder, ignoreFocusOut: true },
  );
  return pick?.uri;
}

/** Runs a job file and reports how it went; the results panel opens as soon as the job starts. */
export async function runJob(s: Services, jobPath: string): Promise<Outcome> {
  const cfg = settings(vscode.Uri.file(jobPath));
  const outDir = runOutDir(jobPath, cfg.outputFolder, new Date());
  let title: string | undefined;
  try {
    const model = jobModelPath(jobPath, JSON.parse(fs.readFileSync(jobPath, 'utf8')));
    if (model) title = `${path.basename(model)} — ${path.basename(outDir)}`;
  } catch {
    // The runner reports the unreadable file.
  }
  const outcome = await s.runner.run({ jobPath, outDir, device: cfg.device, title, limits: cfg.limits });
  switch (outcome.status) {
    case 'done': {
      // Past Runs offers "Re-run" on this folder: remember which job made it.
      await rememberRunJob(s.state, outDir, jobPath);
      s.runs.refresh();
      const r = outcome.results;
      const best = r.rows.filter((x) => !x.error && typeof x.asr === 'number').sort((a, b) => (a.asr as number) - (b.asr as number))[0];
      const pct = (x?: number | null) => (typeof x === 'number' ? `${(x * 100).toFixed(1)}%` : x === null ? 'n/a' : '—');
      const msg = best
        ? `Backdoor Audit: ASR ${pct(r.baseline.asr)} → ${pct(best.asr)} with ${best.defense}${best.gic ? ' + GIC' : ''} on ${best.aux} (ACC ${pct(best.acc)}).`
        : `Backdoor Audit: ACC ${pct(r.baseline.acc)}, ASR ${pct(r.baseline.asr)}.`;
      void vscode.window.showInformationMessage(msg, 'Show Results').then((c) => c && s.panels.openRun(outDir));
      break;
    }
    case 'failed':
      void vscode.window.showErrorMessage(`Backdoor Audit: the job failed: ${outcome.error}`, 'Show Log').then((c) => c && s.log.show(true));
      break;
    case 'cancelled':
      void vscode.window.showInformationMessage('Backdoor Audit: the job was cancelled; nothing was written.');
      break;
    case 'refused':
      void vscode.window.showWarningMessage(outcome.reason);
      break;
  }
  return outcome;
}

/**
 * Jobs read and train on model files: none starts in an untrusted workspace (package.json keeps the extension
 * out of them; this guards the commands should it run there anyway), and nothing is asked or written first.
 */
function refuseUntrusted(): boolean {
  if (vscode.workspace.isTrusted) return false;
  void vscode.window.showWarningMessage('Backdoor Audit runs jobs only in trusted workspaces. Trust this workspace to purify, evaluate or calibrate.');
  return true;
}

async function modelAction(s: Services, kind: FlowKind, arg: unknown): Promise<void> {
  if (refuseUntrusted()) return;
  const uri = asUri(arg) ?? (await pickFile(MODEL_GLOB, 'The model to work on'));
  if (!uri) return;
  const model = uri.fsPath;
  if (s.runner.isModelBusy(model)) {
    void vscode.window.showWarningMessage(`A job for ${path.basename(model)} is already running. Wait for it or cancel it first.`);
    return;
  }
  const flow = new SetupFlow(s.state);
  const jobPath = await flow.run(kind, model);
  if (!jobPath) return;
  logLine(s.log, 'info', `wrote ${jobPath}`);
  await runJob(s, jobPath);
}

export function registerCommands(ctx: vscode.ExtensionContext, s: Services): void {
  const reg = (id: (typeof COMMANDS)[number], fn: (...args: unknown[]) => unknown) => ctx.subscriptions.push(vscode.commands.registerCommand(id, fn));

  reg('backdoorAudit.purify', (arg) => modelAction(s, 'purify', arg));
  reg('backdoorAudit.evaluate', (arg) => modelAction(s, 'evaluate', arg));
  reg('backdoorAudit.calibrate', (arg) => modelAction(s, 'calibrate', arg));

  reg('backdoorAudit.useAsAux', async (arg, all) => {
    // Explorer multi-selection passes the clicked item and the whole selection.
    const uris = Array.isArray(all) && all.every((u) => u instanceof vscode.Uri) ? (all as vscode.Uri[]) : [asUri(arg)].filter((u): u is vscode.Uri => !!u);
    if (uris.length === 0) return;
    const list = s.state.get<string[]>(AUX_SOURCES_KEY, []).filter((p) => fs.existsSync(p));
    for (const u of uris) if (!list.includes(u.fsPath)) list.push(u.fsPath);
    await s.state.update(AUX_SOURCES_KEY, list);
    const names = uris.map((u) => path.basename(u.fsPath)).join(', ');
    void vscode.window.showInformationMessage(`${names} will be offered as external auxiliary data in the next Purify or Calibrate set-up.`);
  });

  reg('backdoorAudit.runJob', async (arg) => {
    if (refuseUntrusted()) return;
    const uri = asUri(arg) ?? vscode.window.activeTextEditor?.document.uri;
    const job = uri && /audit\.json$/i.test(uri.fsPath) ? uri : await pickFile('**/*audit.json', 'The job to run');
    if (!job) return;
    // Run what is on disk: save the editor first so that the user runs what they see.
    const doc = vscode.workspace.textDocuments.find((d) => d.uri.fsPath === job.fsPath);
    if (doc?.isDirty) await doc.save();
    await runJob(s, job.fsPath);
  });

  reg('backdoorAudit.openRun', async (arg) => {
    let dir = runDirOf(arg);
    if (!dir) {
      const runs = await s.runs.runs();
      const pick = await vscode.window.showQuickPick(
        runs.map((r) => ({ label: r.label, description: r.description, outDir: r.outDir })),
        { placeHolder: runs.length ? 'The run to open' : 'No runs yet' },
      );
      dir = pick?.outDir;
    }
    if (dir && !s.panels.openRun(dir)) void vscode.window.showWarningMessage(`No results.json in ${dir}.`);
  });

  reg('backdoorAudit.runDemo', async () => {
    if (refuseUntrusted()) return;
    let jobPath: string;
    try {
      const demo = prepareDemo(ctx.extensionPath, vscode.workspace.workspaceFolders?.[0]?.uri.fsPath);
      jobPath = demo.jobPath;
      logLine(s.log, 'info', `demo: ${demo.folder}${demo.written.length ? ` (wrote ${demo.written.map((f) => path.basename(f)).join(', ')})` : ' (reused)'}`);
    } catch (e) {
      logLine(s.log, 'error', `demo: ${(e as Error).message}`);
      void vscode.window.showErrorMessage(`Backdoor Audit: cannot set up the demo: ${(e as Error).message}`);
      return;
    }
    // The panel opens as soon as the job starts (the runner's listeners), as for any other job.
    await runJob(s, jobPath);
  });

  reg('backdoorAudit.revealRun', async (arg) => {
    const dir = runDirOf(arg);
    if (dir) await vscode.commands.executeCommand('revealInExplorer', vscode.Uri.file(dir));
  });
  reg('backdoorAudit.openRunResultsJson', async (arg) => {
    const dir = runDirOf(arg);
    if (dir) await vscode.window.showTextDocument(vscode.Uri.file(path.join(dir, 'results.json')), { preview: true });
  });
  reg('backdoorAudit.rerun', async (arg) => {
    if (refuseUntrusted()) return;
    const dir = runDirOf(arg);
    if (!dir) return;
    const job = jobOfRun(s.state, dir) ?? (await pickFile('**/*audit.json', `The job that produced ${path.basename(dir)} (it is not recorded)`))?.fsPath;
    if (job) await runJob(s, job);
  });
  reg('backdoorAudit.deleteRun', async (arg) => {
    const dir = runDirOf(arg);
    if (!dir) return;
    if (await deleteRun(dir, !!s.runner.runningById(dir))) {
      logLine(s.log, 'info', `deleted run folder ${dir}`);
      s.runs.refresh();
    }
  });

  reg('backdoorAudit.cancelJob', (arg) => {
    // The inline button of a running job in Past Runs (its run is the item's).
    const id = (arg as { run?: { id?: unknown } } | undefined)?.run?.id;
    if (typeof id === 'string') s.runner.cancel(id);
  });

  reg('backdoorAudit.refreshRuns', () => s.runs.refresh());
  reg('backdoorAudit.showLog', () => s.log.show(true));
  reg('backdoorAudit.checkEnvironment', () =>
    vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: 'Backdoor Audit: checking the environment' }, async () => {
      try {
        const report = await runDoctorProcess(path.join(ctx.extensionPath, 'dist', 'cli.js'));
        // The report is one block: one info entry whose lines stay together in the Output view.
        logLine(s.log, 'info', ['[environment]', ...formatDoctor(report).split('\n').map((l) => `  ${l}`)].join('\n'));
        void vscode.window.showInformationMessage(doctorSummary(report, settings().device), 'Show Log').then((a) => a && s.log.show(true));
      } catch (e) {
        logLine(s.log, 'error', `[environment] ${(e as Error).message}`);
        void vscode.window.showErrorMessage(`Backdoor Audit: ${(e as Error).message}`);
      }
    }),
  );
  reg('backdoorAudit.openModelInspector', async (arg) => {
    const uri = asUri(arg) ?? (await pickFile(MODEL_GLOB, 'The model to inspect'));
    if (uri) await vscode.commands.executeCommand('vscode.openWith', uri, inspectorViewType(uri.fsPath));
  });
}
