/**
 * Entry of the webview bundle (dist/webview.js), used three ways:
 * - the results panel (`<body data-view="results">`) and the model inspector (`data-view="model"`) inside VS
 *   Code, talking to the host through acquireVsCodeApi();
 * - the standalone report.html the CLI writes, where the results are embedded in the page (see src/shared/report_page.ts)
 *   and there is no host: links and buttons that need one are left out.
 */
import { App, type WebviewApi } from './app';
import { DomView } from './render';
import { CalibrationDomView } from './calibration_view';
import { REPORT_DATA_ID, parseReportData } from '../src/shared/report_page';

declare function acquireVsCodeApi(): WebviewApi;

/** report.html has no host: copy through the browser's clipboard (a selected textarea where the API is absent). */
function copyInPage(text: string): void {
  const fallback = () => {
    const ta = document.createElement('textarea');
    ta.value = text;
    ta.setAttribute('readonly', '');
    ta.className = 'visually-hidden';
    document.body.append(ta);
    ta.select();
    document.execCommand('copy');
    ta.remove();
  };
  if (navigator.clipboard?.writeText) navigator.clipboard.writeText(text).catch(fallback);
  else fallback();
}

/** report.html: the CSV as a download (a blob URL, revoked once clicked). */
function downloadInPage(text: string, name: string): void {
  const url = URL.createObjectURL(new Blob([text], { type: 'text/csv;charset=utf-8' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function boot(): void {
  const root = document.getElementById('app') ?? document.body;
  const embedded = document.getElementById(REPORT_DATA_ID);
  if (embedded) {
    const data = parseReportData(embedded.textContent ?? '');
    const noHost: WebviewApi = { postMessage: () => undefined, getState: () => undefined, setState: () => undefined };
    const view = new DomView(
      root,
      { openModel: () => undefined, openResultsJson: () => undefined, revealOutDir: () => undefined, cancel: () => undefined, action: () => undefined, copyText: copyInPage, exportCsv: (t) => downloadInPage(t, 'results.csv') },
      false,
    );
    const app = new App(noHost, view, 'results');
    if (data) app.receive({ type: 'init', run: data.run, results: data.results, running: false });
    else root.textContent = 'This report holds no valid results.';
    return;
  }
  const api = acquireVsCodeApi();
  if (document.body.dataset.view === 'calibration') {
    // The side view follows runs like the panel (same messages, same state), drawn as calibration cards.
    let side!: App;
    side = new App(api, new CalibrationDomView(root, () => side.showPanel()), 'results');
    window.addEventListener('message', (ev: MessageEvent) => side.receive(ev.data));
    side.start();
    return;
  }
  const mode = document.body.dataset.view === 'model' ? 'model' : 'results';
  // The view calls back into the app; the app is created right after and the view only calls on clicks.
  let app!: App;
  const view = new DomView(
    root,
    {
      openModel: (p) => app.openModel(p),
      openResultsJson: () => app.openResultsJson(),
      revealOutDir: () => app.revealOutDir(),
      cancel: () => app.cancel(),
      action: (a) => app.action(a),
      copyText: (t) => app.copyText(t),
      exportCsv: (t) => app.exportCsv(t),
    },
    true,
  );
  app = new App(api, view, mode);
  window.addEventListener('message', (ev: MessageEvent) => app.receive(ev.data));
  app.start();
}

boot();
