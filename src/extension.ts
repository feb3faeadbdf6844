/**
 * Extension entry: creates the services and registers every contribution. Nothing runs here: jobs start
 * from commands, in a worker (dist/worker.js).
 */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import * as vscode from 'vscode';
import { registerCommands } from './vscode/commands';
import { JobRunner } from './vscode/jobRunner';
import { ModelEditorProvider } from './vscode/modelEditor';
import { MODEL_EDITOR_VIEW_TYPE, RESULTS_VIEW_TYPE, ResultsPanels } from './vscode/panel';
import { RunsTree } from './vscode/runsTree';
import { BackendStatus } from './vscode/statusBar';

export function activate(context: vscode.ExtensionContext): void {
  const log = vscode.window.createOutputChannel('Backdoor Audit', { log: true });
  const workerFile = path.join(context.extensionPath, 'dist', 'worker.js');
  const runner = new JobRunner(log, () => new Worker(workerFile));
  const panels = new ResultsPanels(context.extensionUri, runner);
  const runs = new RunsTree();
  const status = new BackendStatus();
  const editor = new ModelEditorProvider(context.extensionUri);
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
    vscode.workspace.onDidChangeConfiguration((e) => e.affectsConfiguration('backdoorAudit') && status.update()),
  );
  registerCommands(context, { runner, panels, runs, log, state: context.workspaceState });
}

export function deactivate(): void {
  // Disposables registered on the context end the workers and close the panels.
}
