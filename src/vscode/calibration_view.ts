/**
 * The Calibration side view (a webview view in the Backdoor Audit view container): GIC's results for the run
 * the user looks at — the results panel last shown or focused, or the job started last — per auxiliary set the
 * bound, the perturbation, the victim's confidence and the BatchNorm distance before and after, the x / g(x) /
 * |g(x) - x| gallery and the raw-vs-calibrated embedding, with a link into the main panel. It follows a running
 * job live with the panel's own messages (init, then the run's events), checked the same way on both sides.
 */
import * as vscode from 'vscode';
import type { RunEvent } from '../shared/run_events';
import { isViewMessage, type HostMessage } from '../shared/panel_messages';
import { webviewHtml, webviewOptions } from './html';
import type { JobRunner } from './job_runner';
import type { ResultsPanels } from './panel';

export const CALIBRATION_VIEW_ID = 'backdoorAudit.calibration';

export class CalibrationView implements vscode.WebviewViewProvider, vscode.Disposable {
  private view?: vscode.WebviewView;
  private ready = false;
  /** The run whose messages the view has been sent. */
  private shown?: string;
  private readonly subscriptions: vscode.Disposable[];

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly panels: ResultsPanels,
    runner: JobRunner,
  ) {
    this.subscriptions = [
      panels.onDidChangeActiveRun(() => this.sendActive()),
      runner.listen({
        event: (run, e) => run.id === this.shown && this.post({ type: 'event', runId: run.id, event: e }),
        ended: (run, o) => {
          // A job process that died without a terminal event still has to end the view's "running" state.
          if (run.id !== this.shown || (o.status !== 'failed' && o.status !== 'cancelled')) return;
          const e: RunEvent = o.status === 'failed' ? { type: 'failed', error: o.error, exitCode: 1 } : { type: 'cancelled' };
          this.post({ type: 'event', runId: run.id, event: e });
        },
      }),
    ];
  }

  resolveWebviewView(view: vscode.WebviewView): void {
    this.view = view;
    this.ready = false;
    this.shown = undefined;
    view.webview.options = webviewOptions(this.extensionUri);
    view.webview.html = webviewHtml(view.webview, this.extensionUri, 'calibration', 'Calibration');
    const subs = [
      view.webview.onDidReceiveMessage((m: unknown) => {
        // The side view speaks the panel's protocol but acts on two messages only.
        if (!isViewMessage(m)) return;
        if (m.type === 'ready') {
          this.ready = true;
          this.shown = undefined;
          this.sendActive();
        } else if (m.type === 'showPanel') {
          const a = this.panels.activeRun();
          if (a) this.panels.show(a.run);
        }
      }),
      view.onDidDispose(() => {
        if (this.view === view) this.view = undefined;
        this.ready = false;
        for (const d of subs) d.dispose();
      }),
    ];
  }

  private sendActive(): void {
    const a = this.panels.activeRun();
    if (!a || !this.ready || this.shown === a.run.id) return;
    this.shown = a.run.id;
    for (const m of this.panels.initMessages(a.run, a.roots)) this.post(m);
  }

  private post(m: HostMessage): void {
    if (this.view && this.ready) void this.view.webview.postMessage(m);
  }

  dispose(): void {
    for (const d of this.subscriptions) d.dispose();
  }
}
