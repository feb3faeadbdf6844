/**
 * The panel as a workbench (and report.html, the same bundle): the model diff view per purified model, the
 * reversed triggers, the results table as a data tool, and the accessibility of all of it. The numbers shown
 * are checked on pure functions; the DOM (happy-dom, real view code, chart.js replaced by a recorder) for
 * what a user or a screen reader meets.
 */
import * as assert from 'node:assert/strict';
import type { Results, ResultRow } from '../../src/shared/results';
import type { ModelDiff } from '../../src/shared/model_diff';
import type * as StateModule from '../../webview-ui/state';
import { sampleResults } from './vscode-fixtures';
import { usePanelDom } from '../helpers/panel-dom';
import { diffChartLabel, diffChoices, diffSeries, diffSummary, relText } from '../../webview-ui/diff_format';
import { anomalyChartLabel, anomalySeries, triggerCards } from '../../webview-ui/detection_format';
import type { NcDetection } from '../../src/shared/results';

interface ViewLike {
  showResults(s: ReturnType<typeof StateModule.emptyState>): void;
}

/** Records what each chart would draw (chart.js needs a layout engine happy-dom lacks). */
class FakeChart {
  static defaults = { font: {} as Record<string, unknown> };
  static register(): void {}
  static last: FakeChart[] = [];
  data: { labels?: unknown[]; datasets?: Array<{ data: unknown[]; backgroundColor?: unknown }> };
  constructor(
    readonly canvas: unknown,
    cfg: { data: FakeChart['data'] },
  ) {
    this.data = cfg.data;
    FakeChart.last.push(this);
  }
  update(): void {}
  destroy(): void {}
}

export function sampleDiff(): ModelDiff {
  return {
    layers: [
      { name: 'features.0', kind: 'conv', params: 40, channels: 4, relChange: 0.12, absChange: 0.3, zeroed: [] },
      { name: 'features.1', kind: 'batchnorm', params: 8, channels: 4, relChange: 0.5, absChange: 1, zeroed: [1, 3], bnStats: { mean: 0, var: 0 } },
      { name: 'classifier', kind: 'linear', params: 15, channels: 3, relChange: 0.03, absChange: 0.1, zeroed: [], zeroedInputs: [2] },
    ],
    inserted: [{ name: 'classifier.inserted', params: 20, tensors: ['classifier.inserted.weight', 'classifier.inserted.bias'] }],
    removed: [],
    relChange: 0.2,
    changedLayers: 3,
    zeroedChannels: 2,
  };
}

export function resultsWithDiffs(): Results {
  const r = sampleResults();
  const d = sampleDiff();
  const other: ModelDiff = { ...d, layers: d.layers.map((l) => ({ ...l, relChange: 0, zeroed: [], zeroedInputs: undefined })), inserted: [], relChange: 0, changedLayers: 0, zeroedChannels: 0 };
  r.rows = r.rows.map((row: ResultRow, i) => (i === 0 ? { ...row, diff: d } : i === 1 ? { ...row, diff: other } : row));
  return r;
}

/** NC on 3 classes, class 2 flagged; 2x2 grey triggers. */
export function sampleNc(): NcDetection {
  const b64 = (a: number[]) => Buffer.from(a).toString('base64');
  return {
    anomalyIndex: [0.4, 0.9, 3.5],
    flagged: [2],
    triggers: [0, 1, 2].map((label) => ({ label, shape: [2, 2, 1] as [number, number, number], image: b64([label * 50, 0, 0, 255]), mask: b64([255, 0, 0, 255]), maskL1: 10 - label, ...(label === 2 ? { file: 'nc-trigger-2.png' } : {}) })),
  };
}

describe('webview: reversed triggers (numbers)', () => {
  it('bars per class with the flagged class marked, a chart name that says which, flagged cards first', () => {
    const nc = sampleNc();
    assert.deepEqual(anomalySeries(nc), { labels: ['class 0', 'class 1', 'class 2'], values: [0.4, 0.9, 3.5], flagged: [false, false, true] });
    assert.equal(anomalyChartLabel(nc), 'Bar chart: Neural Cleanse anomaly index per class, 3 classes, threshold 2; flagged: class 2 (3.50); highest: class 2 3.50, class 1 0.90, class 0 0.40.');
    const cards = triggerCards(nc);
    assert.deepEqual(cards.map((c) => [c.trigger.label, c.flagged]), [[2, true], [0, false], [1, false]]);
    assert.equal(cards[0].caption, 'class 2 — flagged: mask L1 8, anomaly index 3.50');
  });
});

describe('webview: model diff (numbers)', () => {
  it('offers every successful row with a diff, labelled by defense, aux set and GIC', () => {
    const c = diffChoices({ rows: resultsWithDiffs().rows });
    assert.deepEqual(c.map((x) => x.label), ['ft on unseen', 'ft on unseen + GIC']);
    // A malformed diff (a hand-edited results.json) is not offered.
    const bad = resultsWithDiffs();
    (bad.rows[0] as { diff: unknown }).diff = { layers: 'x' };
    assert.equal(diffChoices({ rows: bad.rows }).length, 1);
  });

  it('summarizes, plots and names the chart with the numbers of the diff', () => {
    const d = sampleDiff();
    assert.equal(diffSummary(d), 'relative weight change 0.2000 · 3 of 3 layers changed · 2 channels zeroed · 1 input feature zeroed · inserted classifier.inserted (20 parameters)');
    assert.deepEqual(diffSeries(d), { labels: ['features.0', 'features.1', 'classifier'], values: [0.12, 0.5, 0.03], zeroed: [false, true, true] });
    assert.equal(
      diffChartLabel(d, 'ft on unseen'),
      'Bar chart: relative weight change per layer of ft on unseen, 3 layers; largest: features.1 0.5000, features.0 0.1200, classifier 0.0300; zeroed channels in features.1 (2). The table below lists every layer.',
    );
    assert.deepEqual([relText(null), relText(0), relText(2e-6), relText(0.123456)], ['n/a', '0', '2.00e-6', '0.1235']);
  });
});

describe('webview: model diff (DOM)', () => {
  const dom = usePanelDom<ViewLike>('https://webview.invalid/', FakeChart);

  function mount() {
    const root = dom.win.document.createElement('main');
    dom.win.document.body.replaceChildren(root);
    const noop = () => undefined;
    const view = new dom.DomView(root, { openModel: noop, openResultsJson: noop, revealOutDir: noop, cancel: noop, action: noop }, true);
    return { root, view };
  }

  it('shows a per-layer bar chart and a sortable table for the chosen purified model', () => {
    FakeChart.last = [];
    const { root, view } = mount();
    view.showResults(dom.state.fromResults({ id: 'r', title: 't', outDir: '/o' }, resultsWithDiffs()));
    const sec = root.querySelector('#model-diff')!;
    assert.equal((sec as unknown as { hidden: boolean }).hidden, false);
    const select = sec.querySelector('select')!;
    assert.deepEqual([...select.querySelectorAll('option')].map((o) => o.textContent), ['ft on unseen', 'ft on unseen + GIC']);
    const rowsText = () => [...sec.querySelectorAll('tbody tr')].map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent));
    assert.deepEqual(rowsText()[1], ['features.1', 'batchnorm', '8', '0.5000', '2', '1, 3', '0', '0']);
    assert.deepEqual(rowsText()[2].slice(0, 6), ['classifier', 'linear', '15', '0.0300', '1', 'inputs 2']);
    assert.match(sec.querySelector('.diff-summary')!.textContent!, /2 channels zeroed/);
    const bars = FakeChart.last.at(-1)!;
    assert.deepEqual(bars.data.labels, ['features.0', 'features.1', 'classifier']);
    assert.deepEqual(bars.data.datasets![0].data, [0.12, 0.5, 0.03]);
    const canvas = sec.querySelector('canvas')!;
    assert.equal(canvas.getAttribute('role'), 'img');
    assert.match(canvas.getAttribute('aria-label')!, /largest: features\.1 0\.5000/);
    // Sort by relative change (descending first), then ascending.
    const relButton = [...sec.querySelectorAll('th button')].find((b) => b.textContent!.startsWith('‖W′−W‖'))! as unknown as { click(): void };
    relButton.click();
    assert.deepEqual(rowsText().map((r) => r[0]), ['features.1', 'features.0', 'classifier']);
    assert.equal(sec.querySelector('th[aria-sort="descending"]')!.textContent!.startsWith('‖W′−W‖'), true);
    relButton.click();
    assert.deepEqual(rowsText().map((r) => r[0]), ['classifier', 'features.0', 'features.1']);
    // Another model: the table follows the selector.
    (select as unknown as { value: string }).value = (select.querySelectorAll('option')[1] as unknown as { value: string }).value;
    select.dispatchEvent(new dom.win.Event('change') as never);
    assert.deepEqual(rowsText().map((r) => r[3]), ['0', '0', '0']);
    assert.match(canvas.getAttribute('aria-label')!, /ft on unseen \+ GIC.*no layer changed/);
  });

  it('shows the anomaly index chart and every class\'s reversed trigger, the flagged class marked', () => {
    FakeChart.last = [];
    const { root, view } = mount();
    view.showResults(dom.state.fromResults({ id: 'r', title: 't', outDir: '/o' }, sampleResults({ detection: { nc: sampleNc() } })));
    const sec = root.querySelector('#detection')!;
    assert.equal((sec as unknown as { hidden: boolean }).hidden, false);
    const bars = FakeChart.last.find((c) => (c.data.labels ?? [])[0] === 'class 0')!;
    assert.deepEqual(bars.data.datasets![0].data, [0.4, 0.9, 3.5]);
    const colours = bars.data.datasets![0].backgroundColor as string[];
    assert.equal(colours[2] !== colours[0] && colours[0] === colours[1], true, 'the flagged bar has its own colour');
    const figs = [...sec.querySelectorAll('figure')];
    assert.equal(figs.length, 3);
    assert.equal(figs[0].className, 'reversed-trigger flagged');
    assert.match(figs[0].textContent!, /class 2 — flagged: mask L1 8, anomaly index 3\.50 — nc-trigger-2\.png/);
    // Two images per class (mask x pattern, mask), each named.
    const canvases = [...sec.querySelectorAll('figure canvas')];
    assert.equal(canvases.length, 6);
    assert.ok(canvases.every((c) => c.getAttribute('role') === 'img' && (c.getAttribute('aria-label') ?? '').length > 10));
    assert.match(sec.querySelector('.anomaly-chart canvas')!.getAttribute('aria-label')!, /flagged: class 2/);
  });

  it('is hidden when no row has a diff (results of older versions)', () => {
    const { root, view } = mount();
    view.showResults(dom.state.fromResults({ id: 'r', title: 't', outDir: '/o' }, sampleResults()));
    assert.equal((root.querySelector('#model-diff') as unknown as { hidden: boolean }).hidden, true);
  });
});
