/**
 * The panel's DOM rendering in a real DOM implementation (happy-dom): every label that comes from a job, a
 * model file or results.json - aux set names, defenses, model paths, architecture and layer names, error
 * messages, run titles, class labels, log lines - lands in the page as text. A label that is HTML
 * (`<img src=x onerror=alert(1)>`) must show as those characters and create no element.
 */
import * as assert from 'node:assert/strict';
import type { RunEvent } from '../../src/shared/run_events';
import type { Results } from '../../src/shared/results';
import type * as StateModule from '../../webview-ui/state';
import { sampleResults } from './vscode-fixtures';
import { usePanelDom } from '../helpers/panel-dom';

/** The parts of the DOM view the test drives (render.ts is compiled with the DOM library; the tests are not). */
interface ViewLike {
  showResults(s: ReturnType<typeof StateModule.emptyState>): void;
  showInspect(file: string, info?: Record<string, unknown>, error?: string): void;
}

/**
 * chart.js draws on canvases (labels become pixels, not markup) and needs a layout engine happy-dom does not
 * have: a stand-in records what would be drawn. The view code under test is the real one.
 */
class FakeChart {
  static defaults = { font: {} as Record<string, unknown> };
  static drawn: unknown[] = [];
  static register(): void {}
  data: { labels?: unknown[]; datasets?: unknown[] };
  constructor(_canvas: unknown, cfg: { data: FakeChart['data'] }) {
    this.data = cfg.data;
  }
  update(): void {
    FakeChart.drawn.push(this.data.labels);
  }
  destroy(): void {}
}

const EVIL = '<img src=x onerror=alert(1)>';
const EVIL2 = '"><script>alert(2)</script><svg onload=alert(3)>';

/** A results.json whose every string a user or a model file controls is HTML. */
function hostileResults(): Results {
  const r = sampleResults();
  r.model = { ...r.model, path: `/w/${EVIL}.pt`, arch: EVIL, format: EVIL2 };
  r.rows = r.rows.map((row, i) => ({ ...row, aux: i === 2 ? EVIL2 : EVIL, auxType: EVIL2, defense: `${EVIL}-${i}`, output: row.output ? `models/${EVIL}.pt` : null, error: row.error ? EVIL2 : null }));
  r.gic = r.gic.map((g) => ({ ...g, aux: EVIL }));
  r.embeddings = r.embeddings.map((e) => ({ ...e, aux: EVIL2, method: EVIL as 'tsne' }));
  return r;
}

describe('vscode webview: labels render as text (DOM)', () => {
  const dom = usePanelDom<ViewLike>('https://webview.invalid/', FakeChart);

  function mount(interactive = true) {
    const root = dom.win.document.createElement('main');
    dom.win.document.body.replaceChildren(root);
    const clicks: string[] = [];
    const view = new dom.DomView(root, { openModel: (p: string) => void clicks.push(p), openResultsJson: () => undefined, revealOutDir: () => undefined, cancel: () => undefined, action: () => undefined }, interactive);
    return { root, view, clicks };
  }

  /** No element the labels could have created, and each label's characters present as text. */
  function assertInert(root: { querySelectorAll(s: string): { length: number }; textContent: string | null; innerHTML: string }, labels: string[]): void {
    assert.equal(root.querySelectorAll('img, script, svg, iframe, object, embed').length, 0, 'no element from a label');
    assert.equal(root.querySelectorAll('[onerror], [onload]').length, 0, 'no handler attribute from a label');
    const text = root.textContent ?? '';
    for (const l of labels) assert.ok(text.includes(l), `"${l}" is shown as text`);
    // Serialized, text labels are escaped ("<" became "&lt;"); outside quoted attribute values (tooltips
    // hold labels verbatim, as attribute text) no tag from a label appears.
    const html = root.innerHTML;
    assert.ok(html.includes('&lt;img src=x onerror=alert(1)&gt;'));
    assert.doesNotMatch(html.replace(/="[^"]*"/g, '=""'), /<(img|script|svg)[\s>]/);
  }

  it('results grid, header, GIC notes, errors and links: text only', () => {
    const { root, view, clicks } = mount();
    const run = { id: '/w/out', title: `${EVIL} — run`, outDir: '/w/out' };
    view.showResults(dom.state.fromResults(run, hostileResults()));
    assertInert(root, [EVIL, EVIL2, `${EVIL}-0`, `${EVIL} — run`, `failed: ${EVIL2}`]);
    // The model link carries the raw path back to the host (which checks it), not a URL the page follows.
    const links = root.querySelectorAll('vscode-link');
    assert.ok(links.length >= 1);
    (links[0] as unknown as { click(): void }).click();
    assert.deepEqual(clicks, [`models/${EVIL}.pt`]);
    assert.equal(links[0].getAttribute('href'), '#');
  });

  it('live events (log lines, progress stages, failures) and the standalone report view: text only', () => {
    const { root, view } = mount(false);
    const run = { id: '/w/out', title: EVIL, outDir: '/w/out' };
    let s = dom.state.emptyState(run, 'waiting');
    const events: RunEvent[] = [
      { type: 'started', jobPath: `/w/${EVIL}.json`, outDir: '/w/out', cells: 2, backend: EVIL as 'wasm', threads: 1 },
      { type: 'progress', stage: EVIL, done: 1, total: 2, message: EVIL2 } as RunEvent,
      { type: 'log', message: `${EVIL} ${EVIL2}` } as RunEvent,
      { type: 'row', row: hostileResults().rows[0] },
    ];
    for (const e of events) s = dom.state.applyEvent(s, e);
    view.showResults(s);
    assertInert(root, [EVIL]);
    view.showResults(dom.state.applyEvent(s, { type: 'failed', error: `${EVIL} ${EVIL2}`, exitCode: 1 }));
    assertInert(root, [EVIL, EVIL2]);
  });

  it('model inspector: file name, summary values, layer names and errors: text only', () => {
    const { root, view } = mount();
    view.showInspect(`/m/${EVIL}.pt`, { format: EVIL2, arch: EVIL, layers: [{ name: EVIL, kind: EVIL2, params: 3 }], tensors: [{ name: EVIL, shape: [1], dtype: EVIL2 }] });
    assertInert(root, [`${EVIL}.pt`, EVIL, EVIL2]);
    view.showInspect(`/m/${EVIL}.pt`, undefined, `corrupt ${EVIL}`);
    assertInert(root, [`corrupt ${EVIL}`]);
  });
});
