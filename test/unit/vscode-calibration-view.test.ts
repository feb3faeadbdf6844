/**
 * The Calibration side view: the host sends it the run the user looks at (the results panel last opened or
 * focused), after its "ready", in the panel's own messages; it follows a switch to another run, opens the
 * panel from its link, and ignores every other message. The page draws GIC's facts, the gallery and the
 * embedding per aux set, every canvas named.
 */
import { fake, FakeWebviewView, Uri } from './vscode-fake';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { JobRunner } from '../../src/vscode/job_runner';
import { ResultsPanels } from '../../src/vscode/panel';
import { CalibrationView } from '../../src/vscode/calibration_view';
import { sampleResults, tmpdir } from './vscode-fixtures';
import { usePanelDom } from '../helpers/panel-dom';
import { calibrationCards, calibrationFacts } from '../../webview-ui/calibration_format';
import type * as StateModule from '../../webview-ui/state';

const ext = Uri.file('/ext');

function idleRunner(): JobRunner {
  return new JobRunner({ appendLine: () => undefined } as never, () => {
    throw new Error('no job may start here');
  });
}

const tick = () => new Promise((r) => setImmediate(r));

describe('vscode: calibration side view (host)', () => {
  it('shows the active run after ready, follows the focused panel, opens the panel from its link', async () => {
    fake.reset();
    const ws = tmpdir('ba-side-');
    fake.folders = [ws];
    const runA = path.join(ws, 'audit-out', 'run-a');
    const runB = path.join(ws, 'audit-out', 'run-b');
    for (const [d, aux] of [[runA, 'alpha'], [runB, 'beta']] as const) {
      fs.mkdirSync(d, { recursive: true });
      const r = sampleResults();
      r.gic = r.gic.map((g) => ({ ...g, aux }));
      fs.writeFileSync(path.join(d, 'results.json'), JSON.stringify(r));
    }
    const panels = new ResultsPanels(ext as never, idleRunner());
    const side = new CalibrationView(ext as never, panels, idleRunner());
    const view = new FakeWebviewView();
    side.resolveWebviewView(view as never);
    assert.match(view.webview.html, /data-view="calibration"/);
    assert.ok(panels.openRun(runA));
    await tick();
    assert.deepEqual(view.webview.posted, [], 'nothing before the page says ready');
    view.webview.send({ type: 'ready' });
    await tick();
    const inits = () => view.webview.posted.filter((m) => (m as { type: string }).type === 'init') as Array<{ run: { id: string }; results: { gic: Array<{ aux: string }> } }>;
    assert.equal(inits().length, 1);
    assert.equal(inits()[0].run.id, runA);
    assert.equal(inits()[0].results.gic[0].aux, 'alpha');
    // Another run opened: the side view follows it; focusing the first panel again brings it back.
    assert.ok(panels.openRun(runB));
    await tick();
    assert.deepEqual(inits().map((m) => m.results.gic[0].aux), ['alpha', 'beta']);
    fake.panels[0].focus();
    await tick();
    assert.deepEqual(inits().map((m) => m.results.gic[0].aux), ['alpha', 'beta', 'alpha']);
    // The link reveals the panel of the run it shows; other messages do nothing.
    const before = fake.panels[0].revealed;
    view.webview.send({ type: 'showPanel' });
    view.webview.send({ type: 'openModel', path: '../../secret' });
    view.webview.send({ type: 'showPanel', run: 'x' });
    await tick();
    assert.equal(fake.panels[0].revealed, before + 1);
    assert.equal(fake.executed.length, 0);
    side.dispose();
    panels.dispose();
  });
});

interface ViewLike {
  showResults(s: ReturnType<typeof StateModule.emptyState>): void;
}

class FakeChart {
  static defaults = { font: {} as Record<string, unknown> };
  static register(): void {}
  data: unknown;
  constructor(
    readonly canvas: unknown,
    cfg: { data: unknown },
  ) {
    this.data = cfg.data;
  }
  update(): void {}
  destroy(): void {}
}

describe('vscode: calibration side view (page)', () => {
  const dom = usePanelDom<ViewLike>('https://webview.invalid/', FakeChart);
  // The view module was loaded against this suite's page and chart stand-in: later suites load their own.
  after(() => void delete require.cache[require.resolve('../../webview-ui/calibration_view')]);

  it('per aux set: the bound, perturbation, confidence and BN distance before/after', () => {
    const r = sampleResults();
    assert.deepEqual(calibrationFacts(r.gic[0]), [
      ['bound', '‖g(x) − x‖∞ ≤ 0.1'],
      ['max perturbation', '0.100'],
      ['mean perturbation', '0.040'],
      ['victim confidence', '60.0% → 90.0%'],
      ['BN distance', '3.00 → 1.00'],
      ['seconds', '2.0'],
    ]);
    const cards = calibrationCards({ gic: [...r.gic, { ...r.gic[0], seed: 1 }], embeddings: r.embeddings });
    assert.deepEqual(cards.map((c) => [c.aux, c.count, c.embedding?.aux]), [['unseen', 2, 'unseen']]);
  });

  it('draws a card per calibrated aux set with its gallery and embedding, every canvas named, and the panel link', () => {
    // Loaded with the page's globals in place (render code is compiled with the DOM library; the tests are not).
    const { CalibrationDomView } = require('../../webview-ui/calibration_view') as { CalibrationDomView: new (root: unknown, showPanel: () => void) => ViewLike };
    const root = dom.win.document.createElement('main');
    dom.win.document.body.replaceChildren(root);
    let asked = 0;
    const view = new CalibrationDomView(root, () => void asked++);
    const r = sampleResults();
    const px = Buffer.from([0, 128, 255, 64]).toString('base64');
    r.gic[0].samples = [0, 1].map((label) => ({ label, shape: [2, 2, 1] as [number, number, number], x: px, gx: px, diff: px }));
    view.showResults(dom.state.fromResults({ id: 'r', title: 'victim.pt — run-1', outDir: '/o' }, r));
    const cards = root.querySelectorAll('.calibration-card');
    assert.equal(cards.length, 1);
    const facts = [...cards[0].querySelectorAll('.facts-table tr')].map((tr) => [tr.querySelector('th')!.textContent, tr.querySelector('td')!.textContent]);
    assert.deepEqual(facts[3], ['victim confidence', '60.0% → 90.0%']);
    const canvases = [...root.querySelectorAll('canvas')];
    assert.equal(canvases.length, 7, 'x, g(x), |g(x) − x| for two classes, and the embedding');
    assert.ok(canvases.every((c) => c.getAttribute('role') === 'img' && (c.getAttribute('aria-label') ?? '').length > 10));
    assert.equal(root.querySelector('[aria-live]')!.textContent, 'Done: 3 cells, 1 failed');
    (root.querySelector('button') as unknown as { click(): void }).click();
    assert.equal(asked, 1);
    // A run without GIC says so.
    view.showResults(dom.state.fromResults({ id: 'r2', title: 't', outDir: '/o2' }, sampleResults({ gic: [] })));
    assert.match(root.textContent!, /calibrated no auxiliary set/);
  });
});
