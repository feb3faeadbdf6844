/**
 * The results panel host side (CSP, ready handshake and replay, message validation, restore after reload),
 * the runs view and the status bar, against the fake `vscode` module.
 */
import { fake, FakePanel, Uri } from './vscode-fake';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { webviewHtml } from '../../src/vscode/html';
import { JobRunner } from '../../src/vscode/job_runner';
import type { JobHandle } from '../../src/vscode/job_process';
import { inspectorViewType, ResultsPanels } from '../../src/vscode/panel';
import { scanDir, summarizeRun } from '../../src/vscode/runs_tree';
import { BackendStatus, backendLabel, expectedBackend, expectedEvaluation } from '../../src/vscode/status_bar';
import { parseJobToHost } from '../../src/shared/job_process';
import { errorLine } from '../../src/vscode/inspect';
import { ModelEditorProvider } from '../../src/vscode/model_editor';
import { sampleResults, tmpdir } from './vscode-fixtures';

const ext = Uri.file('/ext');

describe('vscode results panel (host)', () => {
  let dir: string;
  beforeEach(() => {
    fake.reset();
    dir = tmpdir('ba-panel-');
  });

  it('serves the bundle under a strict nonce CSP', () => {
    const p = new FakePanel('x', 't');
    const html = webviewHtml(p.webview as never, ext as never, 'results', 'A <title>');
    const csp = /content="([^"]+)"/.exec(html)![1];
    assert.match(csp, /^default-src 'none'/);
    const nonce = /script-src 'nonce-([A-Za-z0-9]+)'/.exec(csp)![1];
    assert.ok(nonce.length >= 16);
    assert.doesNotMatch(csp, /unsafe-(eval|inline)/);
    // Styles: the webview's own files, and elements that carry this page's nonce (read from the csp-nonce tag).
    assert.match(csp, new RegExp(`style-src [^;]*'nonce-${nonce}'`));
    assert.match(html, new RegExp(`<meta property="csp-nonce" content="${nonce}">`));
    const scripts = html.match(/<script[^>]*>/g)!;
    assert.equal(scripts.length, 1);
    assert.ok(scripts[0].includes(`nonce="${nonce}"`) && scripts[0].includes('/ext/dist/webview.js'));
    assert.match(html, /data-view="results"/);
    assert.match(html, /A &#60;title&#62;/);
    assert.notEqual(webviewHtml(p.webview as never, ext as never, 'results', 't'), html, 'a fresh nonce per page');
  });

  it('opens models in the inspector registered for their type', () => {
    assert.equal(inspectorViewType('/a/victim.pt'), 'backdoorAudit.modelInspector.option');
    assert.equal(inspectorViewType('/a/model.json'), 'backdoorAudit.modelInspector.option');
    assert.equal(inspectorViewType('/a/victim.onnx'), 'backdoorAudit.modelInspector');
  });

  it('follows a running job: the panel opens at start, gets init + replay after ready, then live events', async () => {
    const r = sampleResults();
    let emit!: (m: unknown) => void;
    const worker: JobHandle = {
      postMessage: () => undefined,
      on: ((ev: string, cb: (m: unknown) => void) => {
        if (ev === 'message') emit = cb;
      }) as never,
      terminate: () => Promise.resolve(),
    };
    const jobPath = path.join(dir, 'audit.json');
    fs.writeFileSync(jobPath, JSON.stringify({ model: 'victim.pt' }));
    const runner = new JobRunner({ appendLine: () => undefined } as never, () => worker);
    const panels = new ResultsPanels(ext as never, runner);
    const outDir = path.join(dir, 'out');
    const done = runner.run({ jobPath, outDir, title: 'victim.pt — run' });
    await new Promise((res) => setImmediate(res));
    assert.equal(fake.panels.length, 1);
    const panel = fake.panels[0];
    assert.equal(panel.viewType, 'backdoorAudit.results');
    emit({ type: 'started', jobPath, outDir, cells: 3, backend: 'wasm', threads: 1 });
    emit({ type: 'row', row: r.rows[0] });
    assert.equal(panel.webview.posted.length, 0, 'nothing is posted before the ready handshake');
    panel.webview.send({ type: 'ready' });
    await new Promise((res) => setImmediate(res));
    assert.deepEqual(
      panel.webview.posted.map((m: any) => (m.type === 'event' ? m.event.type : `${m.type}:${m.running}`)),
      ['init:true', 'started', 'row'],
    );
    emit({ type: 'row', row: r.rows[1] });
    assert.equal((panel.webview.posted.at(-1) as any).event.row.gic, true);
    // Invalid and hostile messages are ignored.
    panel.webview.send({ type: 'openModel', path: '../../../etc/passwd' });
    panel.webview.send({ type: 'eval', code: 'x' });
    panel.webview.send('ready');
    await new Promise((res) => setImmediate(res));
    assert.ok(!fake.executed.some((e) => e.id === 'vscode.openWith'));
    assert.ok(fake.messages.some((m) => m.level === 'warning' && /"\.\.\/\.\.\/\.\.\/etc\/passwd", which was refused: it climbs out of the run folder/.test(m.text)));
    // Cancel from the panel reaches the runner.
    panel.webview.send({ type: 'cancel' });
    emit({ type: 'cancelled' });
    assert.equal((await done).status, 'cancelled');
    panels.dispose();
  });

  it('restores a panel after reload from its saved state and the run folder', async () => {
    const outDir = path.join(dir, 'run');
    fs.mkdirSync(path.join(outDir, 'models'), { recursive: true });
    fs.writeFileSync(path.join(outDir, 'results.json'), JSON.stringify(sampleResults()));
    fs.writeFileSync(path.join(outDir, 'models', 'unseen-ft.pt'), '');
    const runner = new JobRunner({ appendLine: () => undefined } as never, () => {
      throw new Error('no job here');
    });
    const panels = new ResultsPanels(ext as never, runner);
    fake.folders = [dir];
    const restored = new FakePanel('backdoorAudit.results', 'old');
    await panels.deserializeWebviewPanel(restored as never, { view: 'results', run: { id: outDir, title: 'victim', outDir } });
    assert.match(restored.webview.html, /dist\/webview\.js/);
    restored.webview.send({ type: 'ready' });
    await new Promise((res) => setImmediate(res));
    const init = restored.webview.posted[0] as any;
    assert.equal(init.type, 'init');
    assert.equal(init.running, false);
    assert.equal(init.results.rows.length, 3);
    restored.webview.send({ type: 'openModel', path: 'models/unseen-ft.pt' });
    await new Promise((res) => setImmediate(res));
    const open = fake.executed.find((e) => e.id === 'vscode.openWith')!;
    assert.equal((open.args[0] as Uri).fsPath, path.join(outDir, 'models', 'unseen-ft.pt'));
    assert.equal(open.args[1], 'backdoorAudit.modelInspector.option');

    const junk = new FakePanel('backdoorAudit.results', 'junk');
    await panels.deserializeWebviewPanel(junk as never, { something: 'else' });
    assert.ok(junk.disposed, 'a panel without a run is closed, not left blank');

    // Opening the same run again reveals the existing panel.
    panels.openRun(outDir);
    assert.equal(fake.panels.length, 0);
    assert.equal(restored.revealed, 1);
    panels.dispose();
  });

  it('loads a shown page again while it stays silent, a few times, and never a hidden or ready one', async () => {
    const outDir = path.join(dir, 'run');
    fs.mkdirSync(outDir, { recursive: true });
    fs.writeFileSync(path.join(outDir, 'results.json'), JSON.stringify(sampleResults()));
    fake.folders = [dir];
    const runner = new JobRunner({ appendLine: () => undefined } as never, () => {
      throw new Error('no job here');
    });
    const panels = new ResultsPanels(ext as never, runner, 20);
    const wait = (ms: number) => new Promise((res) => setTimeout(res, ms));
    // Timers may run late on a busy machine: wait for a condition, up to 5 s.
    const until = async (ok: () => boolean) => {
      for (let t = 0; t < 250 && !ok(); t++) await wait(20);
    };
    const htmls = (p: FakePanel) => {
      const seen: string[] = [];
      let html = p.webview.html;
      Object.defineProperty(p.webview, 'html', { get: () => html, set: (v: string) => void seen.push((html = v)) });
      return seen;
    };

    // Silent and shown: loaded again up to three times, each with new HTML, then left alone.
    const silent = new FakePanel('backdoorAudit.results', 'silent');
    const silentLoads = htmls(silent);
    await panels.deserializeWebviewPanel(silent as never, { view: 'results', run: { id: outDir, title: 'victim', outDir } });
    await until(() => silentLoads.length >= 4);
    await wait(100);
    assert.equal(silentLoads.length, 4, 'the first load and three more');
    assert.equal(new Set(silentLoads).size, 4, 'each load is new HTML (a fresh nonce)');

    // Hidden: not loaded again until it is shown; ready: never again.
    const other = path.join(dir, 'other');
    fs.mkdirSync(other);
    fs.writeFileSync(path.join(other, 'results.json'), JSON.stringify(sampleResults()));
    const hidden = new FakePanel('backdoorAudit.results', 'hidden');
    hidden.visible = false;
    const hiddenLoads = htmls(hidden);
    await panels.deserializeWebviewPanel(hidden as never, { view: 'results', run: { id: other, title: 'other', outDir: other } });
    await wait(100);
    assert.equal(hiddenLoads.length, 1);
    hidden.visible = true;
    await until(() => hiddenLoads.length >= 2);
    hidden.webview.send({ type: 'ready' });
    const afterReady = hiddenLoads.length;
    assert.ok(afterReady >= 2, 'shown and silent: loaded again');
    await wait(100);
    assert.equal(hiddenLoads.length, afterReady, 'a page that said ready is not loaded again');
    assert.equal((hidden.webview.posted[0] as any).type, 'init');
    panels.dispose();
  });
});

describe('vscode model inspector', () => {
  beforeEach(() => fake.reset());
  it('sends the inspect summary after ready and forwards action buttons to the commands', async () => {
    let calls = 0;
    const provider = new ModelEditorProvider(ext as never, async () => {
      calls++;
      return { info: { format: 'pt', arch: 'preact-resnet18', inputShape: [32, 32, 3] } };
    });
    const doc = provider.openCustomDocument(Uri.file('/m/victim.pt') as never);
    const panel = new FakePanel('backdoorAudit.modelInspector.option', 'victim.pt');
    provider.resolveCustomEditor(doc, panel as never);
    assert.match(panel.webview.html, /data-view="model"/);
    panel.webview.send({ type: 'ready' });
    await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(panel.webview.posted.map((m: any) => [m.type, Boolean(m.info)]), [['inspect', false], ['inspect', true]]);
    // A second editor on the same document reuses the summary.
    const p2 = new FakePanel('x', 'y');
    provider.resolveCustomEditor(doc, p2 as never);
    p2.webview.send({ type: 'ready' });
    await new Promise((r) => setTimeout(r, 5));
    assert.equal(calls, 1);
    panel.webview.send({ type: 'action', action: 'purify' });
    panel.webview.send({ type: 'action', action: 'rm -rf' });
    assert.deepEqual(fake.executed.map((e) => e.id), ['backdoorAudit.purify']);
    assert.equal(errorLine('warn\nerror: not a zip archive (victim.pt)\n', 'x'), 'not a zip archive (victim.pt)');
  });
});

describe('vscode runs view and status bar', () => {
  it('summarizes a run by its best purification', () => {
    const s = summarizeRun('/runs/r1', sampleResults(), new Date(2025, 4, 6, 7, 8).getTime());
    assert.equal(s.label, 'victim.pt · 2025-05-06 07:08');
    assert.equal(s.description, 'ASR 99.0% → 3.0% (ft+GIC on unseen)');
    assert.match(s.tooltip, /3 cells, 1 failed/);
  });

  it('finds results.json in run folders', () => {
    const root = tmpdir('ba-scan-');
    for (const d of ['a/run-1', 'b', 'node_modules/x']) {
      fs.mkdirSync(path.join(root, d), { recursive: true });
      fs.writeFileSync(path.join(root, d, 'results.json'), '{}');
    }
    assert.deepEqual(scanDir(root).map((f) => path.relative(root, f)).sort(), ['a/run-1/results.json', 'b/results.json']);
  });

  it('shows the GPU when tfjs-node-gpu is installed, else the WebAssembly CPU path', () => {
    assert.equal(expectedBackend('auto', (id) => id === '@tensorflow/tfjs-node-gpu'), 'tensorflow-gpu');
    assert.equal(expectedBackend('cpu', (id) => id === '@tensorflow/tfjs-node-gpu'), 'wasm');
    assert.equal(expectedBackend('auto', () => false), 'wasm');
    assert.equal(backendLabel('tensorflow-gpu'), 'GPU (CUDA)');
    assert.equal(expectedEvaluation('wasm', (id) => id === 'onnxruntime-node'), 'onnxruntime-cpu');
    assert.equal(expectedEvaluation('wasm', () => false), 'wasm');
    assert.equal(expectedEvaluation('tensorflow-gpu', () => true), 'tensorflow-gpu', 'a GPU backend evaluates where it trains');
    // The webgpu package resolving says nothing about an adapter: the guess stays on the CPU until a job reports.
    assert.equal(expectedBackend('auto', (id) => id === 'webgpu'), 'wasm');
    assert.equal(backendLabel('webgpu'), 'GPU (WebGPU)');
    assert.equal(expectedEvaluation('webgpu', () => true), 'webgpu');
  });

  it("names the job process's backend: WebAssembly training, ONNX Runtime evaluation, as its messages report them", async () => {
    fake.reset();
    const dir = tmpdir('ba-status-');
    let emit: (m: unknown) => void = () => undefined;
    const worker: JobHandle = {
      postMessage: () => undefined,
      on: ((ev: string, cb: (m: unknown) => void) => {
        if (ev === 'message') emit = cb;
      }) as never,
      terminate: () => Promise.resolve(),
    };
    // The job process, as the host receives it: every message passes the channel's check first.
    const send = (m: unknown) => {
      const parsed = parseJobToHost(m);
      assert.ok(parsed, `the host drops ${JSON.stringify(m).slice(0, 80)}`);
      emit(parsed);
    };
    const jobPath = path.join(dir, 'audit.json');
    fs.writeFileSync(jobPath, JSON.stringify({ model: 'victim.pt' }));
    const runner = new JobRunner({ appendLine: () => undefined } as never, () => worker);
    // The extension host itself resolves neither tfjs-node nor onnxruntime-node here: its guess is plain WebAssembly.
    const status = new BackendStatus(() => false);
    runner.listen(status);
    const item = (status as unknown as { item: { text: string; tooltip: string; visible: boolean } }).item;
    // Shown only while jobs run; its text and tooltip are ready for the first.
    assert.equal(item.visible, false);
    assert.match(item.text, / on CPU \(WebAssembly\)$/);
    assert.match(item.tooltip, /expected/);

    const outDir = path.join(dir, 'out');
    const done = runner.run({ jobPath, outDir, title: 'victim.pt — run' });
    await new Promise((res) => setImmediate(res));
    const r = sampleResults();
    send({ type: 'started', jobPath, outDir, cells: 2, backend: 'wasm', threads: 2 });
    send({ type: 'log', message: 'evaluating with ONNX Runtime (CPU)' });
    send({ type: 'baseline', model: r.model, baseline: r.baseline, evaluation: 'onnxruntime-cpu' });
    assert.equal(item.visible, true);
    assert.equal(item.text, '$(server-process) Backdoor Audit: a job on CPU (WebAssembly + ONNX Runtime)');
    assert.match(item.tooltip, /train on WebAssembly and evaluate with ONNX Runtime \(CPU\) \(as the last job reported\)/);
    // Progress is the notification's: the item's text stays.
    send({ type: 'progress', stage: 'ft on unseen', done: 3, total: 10 });
    assert.equal(item.text, '$(server-process) Backdoor Audit: a job on CPU (WebAssembly + ONNX Runtime)');
    send({ type: 'done', results: { ...r, backend: { name: 'wasm', threads: 2, evaluation: 'onnxruntime-cpu' } }, resultsPath: path.join(outDir, 'results.json') });
    assert.equal((await done).status, 'done');
    assert.equal(item.visible, false, 'hidden once no job runs');
    assert.match(item.text, / on CPU \(WebAssembly \+ ONNX Runtime\)$/);

    // A job process without ONNX Runtime says so in results.json: the item follows it, not the last job.
    const second = runner.run({ jobPath, outDir: path.join(dir, 'out2'), title: 'victim.pt — run 2' });
    await new Promise((res) => setImmediate(res));
    send({ type: 'started', jobPath, outDir, cells: 2, backend: 'wasm', threads: 2 });
    send({ type: 'baseline', model: r.model, baseline: r.baseline, evaluation: 'wasm' });
    send({ type: 'done', results: { ...r, backend: { name: 'wasm', threads: 2, evaluation: 'wasm' } }, resultsPath: path.join(dir, 'out2', 'results.json') });
    assert.equal((await second).status, 'done');
    assert.match(item.text, / on CPU \(WebAssembly\)$/);
    assert.match(item.tooltip, /train and evaluate on WebAssembly/);
    status.dispose();
  });
});
