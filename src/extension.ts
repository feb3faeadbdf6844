/**
 * Extension entry: creates the services and registers every contribution. Nothing runs here: jobs start
 * from commands, each in its own process (dist/job-process.js).
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import { registerCommands } from './vscode/commands';
import { JobRunner } from './vscode/job_runner';
import { forkJobProcess } from './vscode/job_process';
import { settings } from './vscode/config';
import { ModelEditorProvider } from './vscode/model_editor';
import { MODEL_EDITOR_VIEW_TYPE, RESULTS_VIEW_TYPE, ResultsPanels } from './vscode/panel';
import { RunsTree } from './vscode/runs_tree';
import { BackendStatus } from './vscode/status_bar';
import { logLine } from './vscode/log';
import { CALIBRATION_VIEW_ID, CalibrationView } from './vscode/calibration_view';

export function activate(context: vscode.ExtensionContext): void {
  const log = vscode.window.createOutputChannel('Backdoor Audit', { log: true });
  const script = path.join(context.extensionPath, 'dist', 'job-process.js');
  const runner = new JobRunner(log, (req) =>
    forkJobProcess({
      script,
      cwd: path.dirname(req.jobPath),
      maxMemoryMB: settings().jobMaxMemoryMB,
      // The job process's stderr carries Node's and native libraries' warnings and crash reports.
      onOutput: (line, stream) => logLine(log, stream === 'stderr' ? 'warn' : 'info', `[job process ${stream}] ${line}`),
    }),
  );
  const panels = new ResultsPanels(context.extensionUri, runner);
  const runs = new RunsTree(runner);
  const status = new BackendStatus();
  const editor = new ModelEditorProvider(context.extensionUri);
  const calibration = new CalibrationView(context.extensionUri, panels, runner);
  const editorOptions = { webviewOptions: { retainContextWhenHidden: false }, supportsMultipleEditorsPerDocument: true };

  context.subscriptions.push(
    log,
    runner,
    panels,
    runs,
    status,
    runner.listen(status),
    vscode.window.registerWebviewPanelSerializer(RESULTS_VIEW_TYPE, panels),
    vscode.window.registerCustomEditorProvider(MODEL_EDITOR_VIEW_TYPE, editor, editorOptions),
    // The same editor, as an option only, for extensions other tools also claim (.pt, .pth, model.json).
    vscode.window.registerCustomEditorProvider(`${MODEL_EDITOR_VIEW_TYPE}.option`, editor, editorOptions),
    vscode.window.registerTreeDataProvider('backdoorAudit.runs', runs),
    calibration,
    vscode.window.registerWebviewViewProvider(CALIBRATION_VIEW_ID, calibration),
    vscode.workspace.onDidChangeConfiguration((e) => e.affectsConfiguration('backdoorAudit') && status.update()),
  );
  registerCommands(context, { runner, panels, runs, log, state: context.workspaceState });
}

export function deactivate(): void {
  // Disposables registered on the context end the job processes and close the panels.
}
