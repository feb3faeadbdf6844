/**
 * The webview boundary and workspace trust, against the fake `vscode` module: the pages' CSP admits nothing
 * remote and only nonce'd scripts; every message from a page is checked against the protocol before the host
 * acts (unknown types, extra or wrongly typed fields refused); paths from a page - clicked in the grid or
 * restored from the page's saved state - resolve only inside the workspace folders (no "..", no absolute
 * paths, no symlinks out), with a message when refused; an untrusted workspace runs no job and reads no more
 * of a model than its header.
 */
import { fake, FakePanel, Uri, window as fakeWindow } from './vscode-fake';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { activate } from '../../src/extension';
import { webviewHtml, webviewOptions } from '../../src/vscode/html';
import { headerSummary } from '../../src/vscode/inspect';
import { JobRunner } from '../../src/vscode/job_runner';
import { ModelEditorProvider } from '../../src/vscode/model_editor';
import { ResultsPanels } from '../../src/vscode/panel';
import { isViewMessage } from '../../src/shared/panel_messages';
import { checkWebviewDir, resolveWebviewPath } from '../../src/vscode/webview_paths';
import { sampleResults, tmpdir } from './vscode-fixtures';

const root = path.join(__dirname, '..', '..');
const ext = Uri.file('/ext');
const tick = () => new Promise((r) => setImmediate(r));

/** A workspace with one finished run (results.json, a purified model) and a secret folder beside it. */
function workspace() {
  const base = tmpdir('ba-boundary-');
  const ws = path.join(base, 'ws');
  const outDir = path.join(ws, 'audit-out', 'run-1');
  const outside = path.join(base, 'secret');
  fs.mkdirSync(path.join(outDir, 'models'), { recursive: true });
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(outDir, 'results.json'), JSON.stringify(sampleResults()));
  fs.writeFileSync(path.join(outDir, 'models', 'unseen-ft.pt'), 'PK');
  fs.writeFileSync(path.join(outside, 'id_rsa'), 'secret');
  fs.writeFileSync(path.join(outside, 'results.json'), JSON.stringify(sampleResults()));
  return { base, ws, outDir, outside };
}

function idleRunner(): JobRunner {
  return new JobRunner({ appendLine: () => undefined } as never, () => {
    throw new Error('no job may start here');
  });
}

const opened = () => fake.executed.filter((e) => e.id === 'vscode.openWith').map((e) => (e.args[0] as Uri).fsPath);
const warnings = () => fake.messages.filter((m) => m.level === 'warning').map((m) => m.text);

describe('vscode boundary: CSP', () => {
  it('allows no remote content and runs only scripts carrying the page nonce', () => {
    const p = new FakePanel('x', 't');
    for (const view of ['results', 'model'] as const) {
      const html = webviewHtml(p.webview as never, ext as never, view, '<img src=x onerror=alert(1)>');
      const csp = /<meta http-equiv="Content-Security-Policy" content="([^"]+)">/.exec(html)![1];
      const directives = new Map(csp.split(';').map((d) => d.trim().split(/\s+/)).map(([k, ...v]) => [k, v]));
      assert.deepEqual(directives.get('default-src'), ["'none'"]);
      const nonce = /^'nonce-([A-Za-z0-9]{16,})'$/.exec(directives.get('script-src')!.join(' '))![1];
      // Every source is the extension's own resource origin, data: images, or the nonce: no host, no scheme, no wildcard.
      for (const [k, sources] of directives) {
        for (const s of sources) assert.ok(["'none'", p.webview.cspSource, 'data:', `'nonce-${nonce}'`].includes(s), `${k} allows ${s}`);
      }
      assert.equal(directives.get('img-src')!.includes('data:'), true);
      assert.ok(!directives.has('connect-src') && !directives.has('frame-src'), 'no fetch or frames beyond default-src none');
      // One script element, with the nonce, from the bundle; no inline handlers or other script sources.
      const scripts = [...html.matchAll(/<script\b[^>]*>/g)].map((m) => m[0]);
      assert.deepEqual(scripts, [`<script nonce="${nonce}" src="file:///ext/dist/webview.js">`]);
      assert.doesNotMatch(html.replace(/<title>.*<\/title>/, ''), /\son\w+=|javascript:|https?:\/\//i);
      // The title (a file or run name) is text in the page, not markup.
      assert.ok(html.includes('<title>&#60;img src=x onerror=alert(1)&#62;</title>'));
      assert.ok(!html.includes('<img'));
    }
    const opts = webviewOptions(ext as never) as unknown as { enableScripts: boolean; localResourceRoots: Uri[]; enableCommandUris?: unknown };
    assert.deepEqual(opts.localResourceRoots.map((u) => u.fsPath), ['/ext/dist', '/ext/media']);
    assert.equal(opts.enableCommandUris, undefined, 'command: links stay disabled');
  });
});

describe('vscode boundary: messages from the page', () => {
  it('accepts exactly the protocol and nothing more', () => {
    const good = [{ type: 'ready' }, { type: 'cancel' }, { type: 'openResultsJson' }, { type: 'revealOutDir' }, { type: 'openModel', path: 'models/a.pt' }, { type: 'action', action: 'purify' }, { type: 'copy', text: '| a |' }, { type: 'exportCsv', text: 'a,b\r\n' }];
    for (const m of good) assert.ok(isViewMessage(m), JSON.stringify(m));
    const bad: unknown[] = [
      null,
      'ready',
      ['ready'],
      { type: 'exec', command: 'rm -rf /' },
      { type: 'READY' },
      { type: 'ready', extra: 1 },
      { type: 'cancel', runId: 'another run' },
      { type: 'openModel' },
      { type: 'openModel', path: 3 },
      { type: 'openModel', path: '' },
      { type: 'openModel', path: 'a'.repeat(5000) },
      { type: 'openModel', path: 'models/a.pt', viewType: 'default' },
      { type: 'action', action: 'rm -rf' },
      { type: 'action', action: ['purify'] },
      { type: 'action', action: 'toString' },
      { type: 'copy' },
      { type: 'copy', text: 3 },
      { type: 'copy', text: 'x', html: '<b>' },
      { type: 'exportCsv', text: 'x', path: '/etc/passwd' },
      { type: 'exportCsv', text: 'a'.repeat(8 * 1024 * 1024 + 1) },
      Object.assign(Object.create({ polluted: true }), { type: 'ready' }),
    ];
    for (const m of bad) assert.ok(!isViewMessage(m), JSON.stringify(m));
  });

  it('the host ignores refused messages: nothing opened, cancelled or asked', async () => {
    fake.reset();
    const w = workspace();
    fake.folders = [w.ws];
    let cancelled = 0;
    const runner = idleRunner();
    runner.cancel = () => {
      cancelled++;
      return true;
    };
    const panels = new ResultsPanels(ext as never, runner);
    panels.openRun(w.outDir);
    const page = fake.panels[0].webview;
    page.send({ type: 'ready', now: 'please' });
    page.send({ type: 'openModel', path: 'models/unseen-ft.pt', viewType: 'default' });
    page.send({ type: 'cancel', runId: 'x' });
    page.send({ type: 'revealOutDir', dir: '/' });
    await tick();
    assert.deepEqual(page.posted, [], 'no init before a valid ready');
    assert.deepEqual(fake.executed, []);
    assert.equal(cancelled, 0);
    page.send({ type: 'ready' });
    page.send({ type: 'cancel' });
    await tick();
    assert.equal((page.posted[0] as { type: string }).type, 'init');
    assert.equal(cancelled, 1);
    panels.dispose();
  });
});

describe('vscode boundary: paths from the page', () => {
  it('resolves a relative path inside the run folder and the workspace, by real path', () => {
    const w = workspace();
    fs.symlinkSync(path.join(w.outside, 'id_rsa'), path.join(w.outDir, 'models', 'link.pt'));
    fs.symlinkSync(w.outside, path.join(w.outDir, 'models', 'dirlink'));
    fs.symlinkSync(path.join(w.outDir, 'models', 'unseen-ft.pt'), path.join(w.outDir, 'alias.pt'));
    const roots = [w.ws];
    assert.deepEqual(resolveWebviewPath(w.outDir, 'models/unseen-ft.pt', roots), { ok: true, path: path.join(w.outDir, 'models', 'unseen-ft.pt') });
    assert.deepEqual(resolveWebviewPath(w.outDir, 'alias.pt', roots), { ok: true, path: path.join(w.outDir, 'models', 'unseen-ft.pt') }, 'a link that stays inside is fine');
    const reason = (rel: string, base = w.outDir, r = roots) => {
      const x = resolveWebviewPath(base, rel, r);
      return x.ok ? 'accepted' : x.reason;
    };
    assert.match(reason('../../../secret/id_rsa'), /climbs out/);
    assert.match(reason('models/../../run-1/results.json'), /climbs out/);
    assert.match(reason('..\\..\\secret\\id_rsa'), /climbs out/);
    assert.match(reason(path.join(w.outside, 'id_rsa')), /absolute/);
    assert.match(reason('C:\\Windows\\win.ini'), /absolute/);
    assert.match(reason('models/link.pt'), /link to a file outside the run folder/);
    assert.match(reason('models/dirlink/id_rsa'), /link to a file outside the run folder/);
    assert.match(reason('models/none.pt'), /is not in/);
    assert.match(reason('models/a\0.pt'), /not a file path/);
    // A run folder outside the workspace (host-chosen) is usable only when it is one of the roots.
    assert.match(reason('id_rsa', w.outside), /outside the workspace folders/);
    assert.equal(reason('id_rsa', w.outside, [w.ws, w.outside]), 'accepted');

    assert.equal(checkWebviewDir(w.outDir, roots).ok, true);
    const dirReason = (d: string) => {
      const x = checkWebviewDir(d, roots);
      return x.ok ? 'accepted' : x.reason;
    };
    assert.match(dirReason(w.outside), /outside the workspace folders/);
    assert.match(dirReason('audit-out/run-1'), /not an absolute folder path/);
    assert.match(dirReason(path.join(w.ws, 'missing')), /does not exist/);
    fs.symlinkSync(w.outside, path.join(w.ws, 'looks-inside'));
    assert.match(dirReason(path.join(w.ws, 'looks-inside')), /outside the workspace folders/);
    assert.match(checkWebviewDir(w.outDir, []).ok ? '' : (checkWebviewDir(w.outDir, []) as { reason: string }).reason, /no workspace folder is open/);
  });

  it('a grid click outside the run folder or the workspace is refused with a message, a valid one opens', async () => {
    fake.reset();
    const w = workspace();
    fake.folders = [w.ws];
    fs.symlinkSync(path.join(w.outside, 'id_rsa'), path.join(w.outDir, 'models', 'stolen.pt'));
    const panels = new ResultsPanels(ext as never, idleRunner());
    assert.ok(panels.openRun(w.outDir));
    const page = fake.panels[0].webview;
    page.send({ type: 'ready' });
    for (const p of ['../../../secret/id_rsa', path.join(w.outside, 'id_rsa'), 'models/stolen.pt']) page.send({ type: 'openModel', path: p });
    await tick();
    assert.deepEqual(opened(), []);
    assert.equal(warnings().length, 3);
    assert.match(warnings()[0], /asked to open the model "\.\.\/\.\.\/\.\.\/secret\/id_rsa", which was refused: it climbs out of the run folder/);
    assert.match(warnings()[1], /which was refused: it is an absolute path/);
    assert.match(warnings()[2], /"models\/stolen\.pt", which was refused: it is a link to a file outside the run folder/);
    page.send({ type: 'openModel', path: 'models/unseen-ft.pt' });
    await tick();
    assert.deepEqual(opened(), [path.join(w.outDir, 'models', 'unseen-ft.pt')]);
    panels.dispose();
  });

  it('copy puts the text on the clipboard; export writes the CSV only where the user chose in the save dialog', async () => {
    fake.reset();
    const w = workspace();
    fake.folders = [w.ws];
    const panels = new ResultsPanels(ext as never, idleRunner());
    assert.ok(panels.openRun(w.outDir));
    const page = fake.panels[0].webview;
    page.send({ type: 'ready' });
    page.send({ type: 'copy', text: '| aux |\n| --- |\n' });
    await tick();
    assert.deepEqual(fake.clipboard, ['| aux |\n| --- |\n']);
    const target = path.join(w.ws, 'table.csv');
    let offered: string | undefined;
    fake.answers.push((def: { fsPath: string }) => ((offered = def.fsPath), Uri.file(target)));
    page.send({ type: 'exportCsv', text: 'aux,ACC\r\nunseen,0.95\r\n' });
    await tick();
    assert.equal(offered, path.join(w.outDir, 'results.csv'), 'the dialog opens in the run folder');
    assert.equal(fs.readFileSync(target, 'utf8'), 'aux,ACC\r\nunseen,0.95\r\n');
    // Dismissing the dialog writes nothing.
    page.send({ type: 'exportCsv', text: 'other' });
    await tick();
    assert.equal(fs.readFileSync(target, 'utf8'), 'aux,ACC\r\nunseen,0.95\r\n');
    assert.ok(!fs.existsSync(path.join(w.outDir, 'results.csv')));
    panels.dispose();
  });

  it('a restored panel whose saved run folder is outside the workspace is closed with a message', async () => {
    fake.reset();
    const w = workspace();
    fake.folders = [w.ws];
    const panels = new ResultsPanels(ext as never, idleRunner());
    fs.symlinkSync(w.outside, path.join(w.ws, 'innocent'));
    const cases: Array<[string, RegExp]> = [
      [w.outside, /outside the workspace folders/],
      [path.join(w.outDir, '..', '..', '..', 'secret'), /outside the workspace folders/],
      [path.join(w.ws, 'innocent'), /outside the workspace folders/],
      ['audit-out/run-1', /not an absolute folder path/],
      [path.join(w.ws, 'gone'), /does not exist/],
    ];
    for (const [outDir, why] of cases) {
      const restored = new FakePanel('backdoorAudit.results', 'old');
      await panels.deserializeWebviewPanel(restored as never, { view: 'results', run: { id: outDir, title: 'victim', outDir } });
      assert.ok(restored.disposed, outDir);
      assert.equal(restored.webview.html, '', 'no page is served for it');
      assert.match(warnings().at(-1)!, why);
      assert.match(warnings().at(-1)!, /a results panel was not restored because its run folder .* was refused/);
    }
    // The same folder with no workspace open: refused too.
    fake.folders = [];
    const none = new FakePanel('backdoorAudit.results', 'old');
    await panels.deserializeWebviewPanel(none as never, { view: 'results', run: { id: w.outDir, title: 'victim', outDir: w.outDir } });
    assert.ok(none.disposed);
    assert.match(warnings().at(-1)!, /no workspace folder is open/);
    panels.dispose();
  });

  it('a restored panel inside the workspace works, but only inside its run folder, whatever id it claims', async () => {
    fake.reset();
    const w = workspace();
    fake.folders = [w.ws];
    const panels = new ResultsPanels(ext as never, idleRunner());
    const restored = new FakePanel('backdoorAudit.results', 'old');
    // The page's state names the right folder but a foreign id and a hostile title.
    await panels.deserializeWebviewPanel(restored as never, { view: 'results', run: { id: w.outside, title: '<img src=x onerror=alert(1)>'.repeat(40), outDir: w.outDir, jobPath: path.join(w.outside, 'audit.json') } });
    assert.ok(!restored.disposed);
    assert.ok(restored.webview.html.includes('<title>&#60;img src=x onerror=alert(1)&#62;'));
    restored.webview.send({ type: 'ready' });
    await tick();
    const init = restored.webview.posted[0] as { run: { id: string; outDir: string; title: string; jobPath?: string }; results?: unknown };
    assert.deepEqual([init.run.id, init.run.outDir, init.run.jobPath], [w.outDir, w.outDir, undefined]);
    assert.equal(init.run.title.length, 200);
    assert.ok(init.results, 'results.json of the run folder is read');
    restored.webview.send({ type: 'openModel', path: '../../../secret/id_rsa' });
    restored.webview.send({ type: 'openModel', path: 'models/unseen-ft.pt' });
    restored.webview.send({ type: 'revealOutDir' });
    await tick();
    assert.deepEqual(opened(), [path.join(w.outDir, 'models', 'unseen-ft.pt')]);
    assert.deepEqual(fake.executed.filter((e) => e.id === 'revealFileInOS').map((e) => (e.args[0] as Uri).fsPath), [w.outDir]);
    assert.equal(warnings().length, 1);
    // results.json swapped for a link out of the folder: not opened.
    fs.rmSync(path.join(w.outDir, 'results.json'));
    fs.symlinkSync(path.join(w.outside, 'results.json'), path.join(w.outDir, 'results.json'));
    let shownDoc = 0;
    const orig = fakeWindow.showTextDocument;
    fakeWindow.showTextDocument = async () => void shownDoc++;
    try {
      restored.webview.send({ type: 'openResultsJson' });
      await tick();
    } finally {
      fakeWindow.showTextDocument = orig;
    }
    assert.equal(shownDoc, 0);
    assert.match(warnings().at(-1)!, /the file "results\.json", which was refused: it is a link to a file outside the run folder/);
    // Nor is it read to fill the page: after a reload of the page the run shows no results.
    restored.webview.send({ type: 'ready' });
    await tick();
    const again = restored.webview.posted.at(-1) as { type: string; results?: unknown };
    assert.deepEqual([again.type, again.results], ['init', undefined]);
    panels.dispose();
  });
});

describe('vscode boundary: workspace trust', () => {
  beforeEach(() => fake.reset());

  it('the manifest keeps the extension out of untrusted workspaces', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
    assert.equal(pkg.capabilities.untrustedWorkspaces.supported, false);
    assert.match(pkg.capabilities.untrustedWorkspaces.description, /trusted/);
  });

  it('untrusted: commands start no job and ask nothing; the inspector reads the header only until trust is granted', async () => {
    const w = workspace();
    fake.folders = [w.ws];
    fake.trusted = false;
    const state = new Map<string, unknown>();
    const ctx = {
      subscriptions: [] as { dispose(): unknown }[],
      extensionPath: root,
      extensionUri: Uri.file(root),
      workspaceState: { get: <T>(k: string, d?: T) => (state.has(k) ? (state.get(k) as T) : d), update: async (k: string, v: unknown) => void state.set(k, v), keys: () => [...state.keys()] },
    };
    activate(ctx as never);
    const model = path.join(w.ws, 'victim.pt');
    fs.writeFileSync(model, Buffer.from([0x50, 0x4b, 0x03, 0x04, 0, 0, 0, 0]));
    const job = path.join(w.ws, 'audit.json');
    fs.writeFileSync(job, JSON.stringify({ model: 'victim.pt', data: { test: { format: 'mnist-embedded' } }, defenses: ['ft'] }));
    const before = fs.readdirSync(w.ws).sort();
    for (const id of ['backdoorAudit.purify', 'backdoorAudit.evaluate', 'backdoorAudit.calibrate']) await fake.commands.get(id)!(Uri.file(model));
    await fake.commands.get('backdoorAudit.runJob')!(Uri.file(job));
    assert.deepEqual(fake.prompts, [], 'no set-up question was asked');
    assert.deepEqual(fs.readdirSync(w.ws).sort(), before, 'no audit.json or output folder was written');
    assert.equal(warnings().length, 4);
    for (const m of warnings()) assert.match(m, /only in trusted workspaces/);
    for (const d of ctx.subscriptions) d.dispose();

    // The inspector: magic bytes and size, no inspect process.
    let inspected = 0;
    const provider = new ModelEditorProvider(ext as never, async () => {
      inspected++;
      return { info: { format: 'pt', arch: 'small-cnn' } };
    });
    const panel = new FakePanel('backdoorAudit.modelInspector.option', 'victim.pt');
    provider.resolveCustomEditor(provider.openCustomDocument(Uri.file(model) as never), panel as never);
    panel.webview.send({ type: 'ready' });
    await new Promise((r) => setTimeout(r, 5));
    assert.equal(inspected, 0);
    const summary = panel.webview.posted.at(-1) as { info: { format: string; bytes: number; note: string } };
    assert.deepEqual([summary.info.format, summary.info.bytes], ['zip archive (PyTorch checkpoint)', 8]);
    assert.match(summary.info.note, /not trusted: only the file header was read/);
    // Trust granted while the inspector is open: now the model is read.
    fake.grantTrust();
    await new Promise((r) => setTimeout(r, 5));
    assert.equal(inspected, 1);
    assert.deepEqual(panel.webview.posted.at(-1), { type: 'inspect', file: model, info: { format: 'pt', arch: 'small-cnn' } });
    panel.dispose();
  });

  it('the header summary reads 16 bytes and names the format from them alone', () => {
    const d = tmpdir('ba-header-');
    const write = (name: string, bytes: Uint8Array) => {
      const f = path.join(d, name);
      fs.writeFileSync(f, bytes);
      return f;
    };
    const st = Buffer.concat([Buffer.from([20, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{"w":{"dtype":"F32"}}')]);
    const cases: Array<[string, Uint8Array, string]> = [
      ['a.pt', Buffer.from([0x50, 0x4b, 0x03, 0x04, 1, 2, 3]), 'zip archive (PyTorch checkpoint)'],
      ['b.pth', Buffer.from([0x80, 0x02, 0x8a, 0x0a]), 'pickle (legacy PyTorch checkpoint)'],
      ['c.safetensors', st, 'safetensors'],
      ['model.json', Buffer.from('{"modelTopology":{}}'), 'JSON (TensorFlow.js model.json)'],
      ['d.onnx', Buffer.from([0x08, 0x07, 0x12, 0x00]), 'protobuf (ONNX)'],
      ['e.onnx', Buffer.from('<html>'), 'unknown'],
    ];
    for (const [name, bytes, format] of cases) assert.equal(headerSummary(write(name, bytes)).info!.format, format, name);
    assert.match(headerSummary(path.join(d, 'missing.pt')).error!, /cannot read the file \(ENOENT\)/);
  });
});
