/**
 * The results panel's browser logic in plain Node: the ViewState folded from RunEvents, the grid, chart and
 * scatter series, the controller with a stubbed acquireVsCodeApi(), and the report.html page.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RunEvent } from '../../src/shared/run_events';
import { isHostMessage, isViewMessage, type InspectInfo, type RunInfo, type ViewMessage } from '../../src/shared/panel_messages';
import { App, type SavedState, type View, type WebviewApi } from '../../webview-ui/app';
import { AUX_TYPE_NOTES, backendText, buildGrid, figureSeries, classColour, pct, scatterSeries, statusText } from '../../webview-ui/format';
import { jsonForScript, parseReportData, renderReportHtml, REPORT_DATA_ID } from '../../src/shared/report_page';
import { applyEvent, emptyState, fractionDone, fromResults, type ViewState } from '../../webview-ui/state';
import { sampleResults } from './vscode-fixtures';

const run: RunInfo = { id: '/w/out/run-1', title: 'victim.pt — run-1', outDir: '/w/out/run-1' };

function liveEvents(): RunEvent[] {
  const r = sampleResults();
  return [
    { type: 'started', jobPath: '/w/audit.json', outDir: run.outDir, cells: 3, backend: 'wasm', threads: 1 },
    { type: 'baseline', model: r.model, baseline: r.baseline, evaluation: 'onnxruntime-cpu' },
    { type: 'progress', stage: 'ft', done: 2, total: 4 },
    { type: 'row', row: r.rows[0] },
    { type: 'gic', entry: r.gic[0] },
    { type: 'row', row: r.rows[1] },
    { type: 'embedding', entry: r.embeddings[0] },
  ];
}

describe('vscode webview: state and formatting', () => {
  it('folds live events into the same view as the final results', () => {
    let s: ViewState = emptyState(run);
    for (const e of liveEvents()) s = applyEvent(s, e);
    assert.equal(s.status, 'running');
    assert.equal(s.rows.length, 2);
    assert.equal(fractionDone(s), (2 + 0.5) / 3);
    // The header names the training backend and, from the baseline on, what evaluates.
    assert.deepEqual(s.backend, { name: 'wasm', threads: 1, evaluation: 'onnxruntime-cpu' });
    assert.equal(backendText(s.backend!), 'wasm ×1 + ONNX Runtime (evaluation)');
    assert.equal(backendText({ name: 'tensorflow-gpu', threads: 1, evaluation: 'tensorflow-gpu' }), 'tensorflow-gpu ×1');
    // A WebGPU run names its GPU, from results.json's backend.adapter.
    const onGpu = fromResults(run, { ...sampleResults(), backend: { name: 'webgpu', threads: 0, evaluation: 'webgpu', device: 'auto', adapter: 'NVIDIA H100 80GB HBM3 (nvidia hopper)' } }).backend!;
    assert.equal(backendText(onGpu), 'webgpu on NVIDIA H100 80GB HBM3 (nvidia hopper)');
    assert.equal(backendText(fromResults(run, { ...sampleResults(), backend: { name: 'wasm', threads: 2, evaluation: 'onnxruntime-cpu' } }).backend!), 'wasm ×2 + ONNX Runtime (evaluation)');
    // A re-sent row replaces, never duplicates.
    s = applyEvent(s, { type: 'row', row: { ...sampleResults().rows[0], asr: 0.07 } });
    assert.equal(s.rows.length, 2);
    assert.equal(s.rows[0].asr, 0.07);
    s = applyEvent(s, { type: 'done', results: sampleResults(), resultsPath: '/x' });
    assert.equal(s.status, 'done');
    assert.deepEqual(s.rows, fromResults(run, sampleResults()).rows);
    assert.equal(fractionDone(s), 1);
    assert.equal(applyEvent(s, { type: 'failed', error: 'boom', exitCode: 1 }).error, 'boom');
  });

  it('puts GIC off and on side by side per aux set x defense, with failures and the baseline', () => {
    const g = buildGrid(fromResults(run, sampleResults()));
    assert.deepEqual(g.baseline, { acc: '97.0%', asr: '99.0%', ra: '1.0%' });
    assert.ok(g.showOff && g.showOn);
    assert.deepEqual(g.groups.map((x) => x.aux), ['unseen', 'ood-brightness']);
    const ft = g.groups[0].lines[0];
    assert.equal(ft.defense, 'ft');
    assert.deepEqual([ft.off!.acc, ft.off!.asr, ft.off!.ra, ft.off!.der], ['95.0%', '8.0%', '85.0%', '94.5%']);
    assert.equal(ft.on!.asr, '3.0%');
    assert.equal(ft.on!.output, 'models/unseen-ft-gic.pt');
    assert.ok(ft.on!.good);
    assert.match(g.groups[0].gicNote!, /≤ 0\.1 .*confidence 60\.0% → 90\.0%/);
    const failed = g.groups[1].lines[0].off!;
    assert.equal(failed.error, 'diverged');
    assert.equal(failed.asr, '—');
    assert.equal(pct(undefined), '—');
  });

  it('builds the Figure-1 series (baseline first, GIC off and on side by side, failed cells as gaps) and the scatter series by set and class', () => {
    const b = figureSeries(fromResults(run, sampleResults()));
    assert.deepEqual(b.labels, ['baseline', 'unseen (unseen) · ft', 'ood-brightness (ood) · ft']);
    assert.deepEqual(b.datasets.map((d) => [d.label, d.values, d.errors]), [
      ['ACC, GIC off', [97, 95, null], [null, null, null]],
      ['ACC, GIC on', [null, 96, null], [null, null, null]],
      ['ASR, GIC off', [99, 8, null], [null, null, null]],
      ['ASR, GIC on', [null, 3, null], [null, null, null]],
    ]);
    assert.equal(b.runs, 1);
    const sc = scatterSeries(sampleResults().embeddings[0]);
    assert.deepEqual(sc.series.map((x) => x.set), ['reference', 'aux', 'calibrated']);
    assert.deepEqual(sc.classes, [0, 1]);
    assert.equal(sc.series[1].colours[0], classColour(1));
    assert.notEqual(classColour(0), classColour(1));
    assert.match(classColour(12), /^hsl/);
    assert.match(statusText({ ...emptyState(run), status: 'cancelled' }), /nothing was written/);
  });
});

describe('webview: repeated seeds', () => {
  const run = { id: 'r', title: 't', outDir: '/o' };
  const row = (seed: number, gic: boolean, acc: number, asr: number, error: string | null = null) => ({
    aux: 'heldout', auxType: 'unseen', gic, defense: 'ft', seed, acc: error ? undefined : acc, asr: error ? undefined : asr, ra: error ? undefined : 0.5, der: error ? undefined : 0.5, seconds: 1, output: `ft-${seed}`, error,
  });
  const rows = [row(0, false, 0.9, 0.3), row(0, true, 0.92, 0.1), row(1, false, 0.8, 0.5), row(1, true, 0.85, 0.2), row(2, false, 0.85, 0.4), row(2, true, 0.86, 0.25), row(3, false, 0, 0, 'boom'), row(3, true, 0.9, 0.9)];
  const synth = [row(0, false, 0.5, 0.9), row(1, false, 0.6, 0.8)].map((r) => ({ ...r, aux: 'inverted', auxType: 'synthetic' }));

  it('keeps every seed\'s row apart while a job runs', () => {
    let s = emptyState(run, 'running');
    for (const r of rows) s = applyEvent(s, { type: 'row', row: r });
    assert.equal(s.rows.length, rows.length);
  });

  it('shows mean ± std per cell, marks a GIC effect whose interval excludes zero, and labels synthetic data as model inversion', () => {
    const g = buildGrid(fromResults(run, sampleResults({ rows: [...rows, ...synth], gic: [] })));
    const ft = g.groups[0].lines[0];
    // GIC off: seeds 0-2 (seed 3 failed); ACC 0.9, 0.8, 0.85 -> 85.0% ± 5.0.
    assert.deepEqual([ft.off!.acc, ft.off!.asr, ft.off!.runs], ['85.0% ± 5.0', '40.0% ± 10.0', 3]);
    assert.match(ft.off!.note!, /^1 of 4 runs failed: boom/);
    // Paired ASR differences -20, -30, -15 points over seeds 0-2: [-40.6, -2.7] excludes zero; ACC's does not.
    assert.equal(ft.on!.effect!.asr!.significant, true);
    assert.match(ft.on!.effect!.asr!.text, /3 paired seeds: −21\.7 points, 95% CI \[−40\.6, −2\.7\]/);
    assert.equal(ft.on!.effect!.acc!.significant, false);
    assert.equal(ft.off!.effect, undefined);
    assert.equal(g.groups[1].auxType, 'synthetic');
    assert.match(AUX_TYPE_NOTES[g.groups[1].auxType], /model inversion/);
    const f = figureSeries(fromResults(run, sampleResults({ rows, gic: [] })));
    assert.equal(f.runs, 4);
    assert.deepEqual(f.datasets.find((d) => d.label === 'ACC, GIC off')!.values, [97, 85]);
    assert.deepEqual(f.datasets.find((d) => d.label === 'ACC, GIC off')!.errors, [null, 5]);
  });
});

/** A stubbed acquireVsCodeApi() and a view that records what it was asked to show. */
function harness(saved?: unknown) {
  const posted: ViewMessage[] = [];
  let state: unknown = saved;
  const api: WebviewApi = { postMessage: (m) => posted.push(m), getState: () => state, setState: (s) => (state = s) };
  const shown: ViewState[] = [];
  const inspected: [string, InspectInfo | undefined, string | undefined][] = [];
  const view: View = { showResults: (s) => shown.push(s), showInspect: (f, i, e) => inspected.push([f, i, e]) };
  return { api, view, posted, shown, inspected, state: () => state as SavedState };
}

describe('vscode webview: controller with a stubbed API', () => {
  it('says ready, follows its run live and saves state for restore', () => {
    const h = harness();
    const app = new App(h.api, h.view, 'results');
    app.start();
    assert.deepEqual(h.posted, [{ type: 'ready' }]);
    app.receive({ type: 'init', run, running: true });
    for (const e of liveEvents()) app.receive({ type: 'event', runId: run.id, event: e });
    assert.equal(app.state.rows.length, 2);
    // Events of another run, malformed messages and HTML-looking payloads are rejected or kept as data.
    app.receive({ type: 'event', runId: 'other', event: liveEvents()[3] });
    app.receive({ type: 'event', runId: run.id, event: { type: 'exec', code: 'alert(1)' } });
    app.receive({ type: 'init', run: { id: 1 }, running: false });
    app.receive(null);
    assert.equal(app.rejected, 4);
    assert.equal(app.state.rows.length, 2);
    assert.equal(h.state().run.id, run.id);
    assert.equal(h.state().snapshot.rows.length, 2);
    app.openModel('models/unseen-ft.pt');
    app.cancel();
    assert.deepEqual(h.posted.slice(1), [{ type: 'openModel', path: 'models/unseen-ft.pt' }, { type: 'cancel' }]);
    for (const m of h.posted) assert.ok(isViewMessage(m));
  });

  it('restores the snapshot at once after a reload and marks a job that died with the window', () => {
    const first = harness();
    const a = new App(first.api, first.view, 'results');
    a.start();
    a.receive({ type: 'init', run, running: true });
    for (const e of liveEvents()) a.receive({ type: 'event', runId: run.id, event: e });

    const h = harness(JSON.parse(JSON.stringify(first.state())));
    const app = new App(h.api, h.view, 'results');
    app.start();
    assert.equal(h.shown[0].rows.length, 2, 'the restored rows are shown before the host answers');
    app.receive({ type: 'init', run, running: false });
    assert.equal(app.state.status, 'interrupted');
    assert.equal(app.state.rows.length, 2);
    app.receive({ type: 'init', run, running: false, results: sampleResults() });
    assert.equal(app.state.status, 'done');
    assert.equal(app.state.rows.length, 3);
  });

  it('model inspector: shows the summary and sends actions', () => {
    const h = harness();
    const app = new App(h.api, h.view, 'model');
    app.start();
    app.receive({ type: 'inspect', file: '/m/victim.pt', info: { arch: 'small-cnn' } });
    app.receive({ type: 'inspect', file: '/m/victim.pt', error: 'not a zip archive' });
    assert.deepEqual(h.inspected, [['/m/victim.pt', { arch: 'small-cnn' }, undefined], ['/m/victim.pt', undefined, 'not a zip archive']]);
    app.action('evaluate');
    assert.deepEqual(h.posted, [{ type: 'ready' }, { type: 'action', action: 'evaluate' }]);
    assert.ok(!isHostMessage({ type: 'inspect', file: 3 }));
  });
});

describe('vscode webview: report.html and module boundaries', () => {
  it('embeds the bundle and the results so that nothing closes the script early', () => {
    const r = sampleResults({ rows: [{ ...sampleResults().rows[0], aux: '</script><img src=x onerror=alert(1)>' }] });
    const html = renderReportHtml({ results: r, script: 'var s="</script>";', css: 'body{}</style>' });
    assert.equal(html.match(/<\/script>/g)!.length, 2, 'only the two real script elements close');
    assert.ok(!html.includes('<img'));
    assert.ok(html.includes('<\\/script>'));
    const data = new RegExp(`<script type="application/json" id="${REPORT_DATA_ID}">([^<]*)</script>`).exec(html)![1];
    const back = parseReportData(data)!;
    assert.equal(back.results.rows[0].aux, '</script><img src=x onerror=alert(1)>');
    assert.equal(parseReportData('{"run":1}'), undefined);
    assert.equal(parseReportData('not json'), undefined);
    assert.equal(JSON.parse(jsonForScript({ a: '<&>\u2028' })).a, '<&>\u2028');
  });

  it('imports the webview UI toolkit in one module only and renders labels as text', () => {
    const dir = path.join(__dirname, '..', '..', 'webview-ui');
    const files = fs.readdirSync(dir).filter((f) => f.endsWith('.ts'));
    const importers = files.filter((f) => /from ['"]@vscode\/webview-ui-toolkit/.test(fs.readFileSync(path.join(dir, f), 'utf8')));
    assert.deepEqual(importers, ['toolkit.ts']);
    for (const f of files) {
      const src = fs.readFileSync(path.join(dir, f), 'utf8');
      assert.doesNotMatch(src, /\.innerHTML\s*=|insertAdjacentHTML|outerHTML\s*=|document\.write/, `${f} must not build HTML from strings`);
    }
  });
});
