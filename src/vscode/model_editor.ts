/**
 * A read-only custom editor for model files: the `inspect` summary (format, architecture, input shape,
 * classes, parameters, layers) with buttons for the actions. Read-only because the extension never modifies
 * an input checkpoint; purified models are written next to the run's results.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import { webviewHtml, webviewOptions } from './html';
import { headerSummary, inspectModel, type InspectResult } from './inspect';
import { isViewMessage, type HostMessage } from '../shared/panel_messages';

class ModelDocument implements vscode.CustomDocument {
  /** One inspect per open document, shared by its editors (split views) and re-run when the file changes. */
  summary?: Promise<InspectResult>;
  constructor(readonly uri: vscode.Uri) {}
  dispose(): void {}
}

export type Inspect = (file: string) => Promise<InspectResult>;

export class ModelEditorProvider implements vscode.CustomReadonlyEditorProvider<ModelDocument> {
  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly inspect: Inspect = (f) => inspectModel(extensionUri.fsPath, f),
  ) {}

  openCustomDocument(uri: vscode.Uri): ModelDocument {
    return new ModelDocument(uri);
  }

  resolveCustomEditor(document: ModelDocument, panel: vscode.WebviewPanel): void {
    const file = document.uri.fsPath;
    panel.webview.options = webviewOptions(this.extensionUri);
    panel.webview.html = webviewHtml(panel.webview, this.extensionUri, 'model', file);
    const post = (m: HostMessage) => void panel.webview.postMessage(m);
    const sendSummary = async () => {
      // Untrusted workspace: the header only (magic bytes and size), no parsing and no inspect process.
      if (!vscode.workspace.isTrusted) {
        const h = headerSummary(file);
        post({ type: 'inspect', file, info: h.info, error: h.error });
        return;
      }
      document.summary ??= this.inspect(file);
      const r = await document.summary;
      post({ type: 'inspect', file, info: r.info, error: r.error });
    };
    const subs: vscode.Disposable[] = [
      panel.webview.onDidReceiveMessage((m: unknown) => {
        if (!isViewMessage(m)) return;
        if (m.type === 'ready') {
          post({ type: 'inspect', file });
          void sendSummary();
        } else if (m.type === 'action') {
          void vscode.commands.executeCommand(`backdoorAudit.${m.action}`, document.uri);
        }
      }),
      // Trusting the workspace while the inspector is open: read the model now.
      vscode.workspace.onDidGrantWorkspaceTrust(() => void sendSummary()),
    ];
    // Re-read when the checkpoint is replaced on disk (a training script saving again).
    const watcher = vscode.workspace.createFileSystemWatcher(new vscode.RelativePattern(vscode.Uri.file(path.dirname(file)), path.basename(file)));
    subs.push(
      watcher,
      watcher.onDidChange(() => {
        document.summary = undefined;
        void sendSummary();
      }),
    );
    panel.onDidDispose(() => subs.forEach((d) => d.dispose()));
  }
}
