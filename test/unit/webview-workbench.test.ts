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
import { nextSort, sortRows, toCsv, toMarkdown, type Column } from '../../webview-ui/table_data';
import { bestByDer, filterRows, resultColumns } from '../../webview-ui/results_table';
import { figureChartLabel, figureSeries, statusAnnouncement } from '../../webview-ui/format';

interface ViewLike {
  showResults(s: ReturnType<typeof StateModule.emptyState>): void;
  showInspect(file: string, info?: Record<string, unknown>, error?: string): void;
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
    assert.equal(anomalyChartLabel(nc), 'Bar chart: Neural Cleanse anomaly index per class, 3 classes, threshold 2 (small-mask outliers are flagged); flagged: class 2 (3.50); highest: class 2 3.50, class 1 0.90, class 0 0.40.');
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

/** Rows with a known best per aux set: unseen's best is ft + GIC (DER 0.975), ood-brightness's only success is fp. */
function tableRows(): ResultRow[] {
  const r = sampleResults().rows;
  return [
    ...r,
    { aux: 'unseen', auxType: 'unseen', gic: false, defense: 'fp', acc: 0.9, asr: 0.2, ra: 0.7, der: 0.86, seconds: 9.5, output: 'models/unseen-fp.pt', error: null },
    { aux: 'ood-brightness', auxType: 'ood', gic: false, defense: 'fp', acc: 0.8, asr: 0.5, ra: 0.4, der: 0.66, seconds: 2, output: 'models/ood-fp.pt', error: null },
  ];
}

function sampleState() {
  const r = sampleResults();
  return { status: 'done' as const, rows: r.rows, gic: r.gic, embeddings: r.embeddings, log: [] as string[], baseline: r.baseline, model: r.model };
}

describe('webview: the results table as data (numbers)', () => {
  const cols: Column<{ n: number | null; s: string }>[] = [
    { key: 'n', label: 'n', numeric: true, value: (r) => r.n },
    { key: 's', label: 's|t', value: (r) => r.s },
  ];
  const data = [
    { n: 2, s: 'b' },
    { n: null, s: 'a,"x"' },
    { n: 10, s: '=cmd()' },
  ];

  it('sorts numbers as numbers, missing values last in both directions; a click flips the order', () => {
    assert.deepEqual(sortRows(data, cols[0], 'descending').map((r) => r.n), [10, 2, null]);
    assert.deepEqual(sortRows(data, cols[0], 'ascending').map((r) => r.n), [2, 10, null]);
    assert.deepEqual(nextSort(undefined, cols[0]), { key: 'n', dir: 'descending' });
    assert.deepEqual(nextSort({ key: 'n', dir: 'descending' }, cols[0]), { key: 'n', dir: 'ascending' });
    assert.deepEqual(nextSort({ key: 'n', dir: 'descending' }, cols[1]), { key: 's', dir: 'ascending' });
  });

  it('CSV quotes what needs it and defuses formulas; Markdown escapes pipes and right-aligns numbers', () => {
    assert.equal(toCsv(cols, data), 'n,s|t\r\n2,b\r\n,"a,""x"""\r\n10,\'=cmd()\r\n');
    assert.equal(toMarkdown(cols, data), '| n | s\\|t |\n| ---: | --- |\n| 2 | b |\n|  | a,"x" |\n| 10 | =cmd() |\n');
  });

  it('marks the best run per aux set by DER, filters by aux set and defense, exports raw fractions', () => {
    const rows = tableRows();
    const best = bestByDer(rows);
    assert.deepEqual([...best].map((r) => `${r.aux}/${r.defense}/${r.gic}`), ['unseen/ft/true', 'ood-brightness/fp/false']);
    assert.deepEqual(filterRows(rows, { aux: 'unseen' }).map((r) => r.defense), ['ft', 'ft', 'fp']);
    assert.equal(filterRows(rows, { aux: 'unseen', defense: 'fp' }).length, 1);
    const csv = toCsv(resultColumns(false), filterRows(rows, { defense: 'ft' }));
    assert.equal(csv.split('\r\n')[0], 'aux set,type,GIC,defense,ACC,ASR,RA,DER,seconds,model / error');
    assert.equal(csv.split('\r\n')[2], 'unseen,unseen,on,ft,0.96,0.03,0.9,0.975,4.1,models/unseen-ft-gic.pt');
    assert.equal(csv.split('\r\n')[3], 'ood-brightness,ood,off,ft,,,,,0.1,failed: diverged');
    assert.match(toMarkdown(resultColumns(false), rows.slice(0, 1)), /\| unseen \| unseen \| off \| ft \| 95\.0% \| 8\.0% \| 85\.0% \| 94\.5% \| 3\.2 \| models\/unseen-ft\.pt \|/);
  });

  it('names the Figure-1 chart with its values and announces only state changes', () => {
    const s = { ...sampleState(), rows: tableRows() };
    assert.match(figureChartLabel(figureSeries(s)), /^Bar chart: ACC and ASR per aux set and defense, GIC off and on\. baseline: ACC, GIC off 97%, .*unseen \(unseen\) · ft: ACC, GIC off 95%, ACC, GIC on 96%, ASR, GIC off 8%, ASR, GIC on 3%/);
    assert.equal(statusAnnouncement({ ...s, status: 'running', cells: 9, progress: { stage: 'ft', done: 3, total: 20 } }), 'Running: 5 of 9 cells done.');
    assert.equal(statusAnnouncement({ ...s, status: 'running', cells: 9, progress: { stage: 'ft', done: 4, total: 20 } }), 'Running: 5 of 9 cells done.');
    assert.equal(statusAnnouncement({ ...s, status: 'done' }), 'Done: 5 cells, 1 failed');
  });
});

describe('webview: model diff (DOM)', () => {
  const dom = usePanelDom<ViewLike>('https://webview.invalid/', FakeChart);
  const sent: Array<[string, string]> = [];

  function mount(interactive = true) {
    const root = dom.win.document.createElement('main');
    dom.win.document.body.replaceChildren(root);
    const noop = () => undefined;
    sent.length = 0;
    const view = new dom.DomView(
      root,
      { openModel: noop, openResultsJson: noop, revealOutDir: noop, cancel: noop, action: noop, copyText: (t: string) => void sent.push(['copy', t]), exportCsv: (t: string) => void sent.push(['export', t]) },
      interactive,
    );
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

  it('the results table: filters, sorts, marks the best run, copies and exports what it shows', () => {
    const { root, view } = mount();
    view.showResults(dom.state.fromResults({ id: 'r', title: 't', outDir: '/o' }, sampleResults({ rows: tableRows() })));
    const sec = root.querySelector('#results-table')!;
    const rows = () => [...sec.querySelectorAll('tbody tr')].map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent ?? ''));
    assert.equal(rows().length, 5);
    const [auxSel, defSel] = [...sec.querySelectorAll('select')] as unknown as Array<{ value: string; dispatchEvent(e: unknown): void; querySelectorAll(s: string): unknown[] }>;
    assert.equal(auxSel.querySelectorAll('option').length, 3, 'all, unseen, ood-brightness');
    auxSel.value = 'unseen';
    auxSel.dispatchEvent(new dom.win.Event('change'));
    assert.deepEqual(rows().map((r) => r[3]), ['ft', 'ft', 'fp']);
    assert.match(sec.textContent!, /3 of 5 runs/);
    const header = (label: string) => [...sec.querySelectorAll('th button')].find((b) => b.textContent!.replace(/[▲▼]/g, '').trim() === label)! as unknown as { click(): void };
    header('DER').click();
    assert.deepEqual(rows().map((r) => r[7]), ['97.5% ★ (best DER of this aux set)', '94.5%', '86.0%']);
    assert.equal(sec.querySelectorAll('tr.best-row').length, 1);
    assert.equal(sec.querySelector('tr.best-row .visually-hidden')!.textContent, ' (best DER of this aux set)');
    assert.equal(sec.querySelector('th[aria-sort="descending"]')!.textContent!.replace(/[▲▼]/g, '').trim(), 'DER');
    // The live view keeps the filter and the order when an event re-renders the panel.
    view.showResults(dom.state.fromResults({ id: 'r', title: 't', outDir: '/o' }, sampleResults({ rows: tableRows() })));
    assert.deepEqual(rows().map((r) => r[7].slice(0, 5)), ['97.5%', '94.5%', '86.0%']);
    const tool = (label: string) => ([...sec.querySelectorAll('button.tool-button')].find((b) => b.textContent === label)! as unknown as { click(): void }).click();
    tool('Copy as Markdown');
    tool('Copy as CSV');
    tool('Export CSV…');
    assert.deepEqual(sent.map((x) => x[0]), ['copy', 'copy', 'export']);
    assert.equal(sent[0][1].split('\n').length, 6, 'header, rule, three rows, final newline');
    assert.match(sent[0][1].split('\n')[2], /^\| unseen \| unseen \| on \| ft \| 96\.0%/);
    assert.equal(sent[1][1], sent[2][1]);
    assert.deepEqual(sent[2][1].split('\r\n').slice(1, 4).map((l) => l.split(',')[3]), ['ft', 'ft', 'fp']);
    defSel.value = 'fp';
    defSel.dispatchEvent(new dom.win.Event('change'));
    assert.deepEqual(rows().map((r) => r[3]), ['fp']);
  });

  it('accessibility: every canvas is named, every table has a name and header cells, Tab reaches every control, the status is announced', () => {
    const { root, view } = mount();
    const r = resultsWithDiffs();
    r.detection = { nc: sampleNc() };
    const px = Buffer.from([0, 128, 255, 64]).toString('base64');
    r.gic[0].samples = [{ label: 1, shape: [2, 2, 1], x: px, gx: px, diff: px }];
    view.showResults(dom.state.fromResults({ id: 'r', title: 't', outDir: '/o' }, r));
    const doc = dom.win.document;
    // Canvases: the Figure-1 chart, the scatter, the gallery, the model diff, NC's chart and the triggers.
    const canvases = [...root.querySelectorAll('canvas')];
    assert.ok(canvases.length >= 10, `${canvases.length} canvases`);
    for (const c of canvases) {
      const name = c.getAttribute('aria-label') ?? '';
      assert.equal(c.getAttribute('role'), 'img', `${c.className} in #${c.closest('section')?.id} has role img`);
      assert.ok(name.trim().length >= 10, `canvas ${c.className} in #${c.closest('section')?.id} is named ("${name}")`);
    }
    // Tables: a name (caption) and header cells for every column.
    const tables = [...root.querySelectorAll('table')];
    assert.ok(tables.length >= 4);
    for (const t of tables) {
      const section = t.closest('section')?.id;
      if (t.classList.contains('gallery-table')) {
        assert.ok(t.querySelectorAll('th').length > 0, 'the gallery has header cells');
        continue;
      }
      assert.ok((t.querySelector('caption')?.textContent ?? '').length > 5, `a table in #${section} has a caption`);
      const heads = [...t.querySelectorAll('thead th')];
      assert.ok(heads.length > 0, `a table in #${section} has header cells`);
      assert.ok(heads.every((h) => ['col', 'colgroup'].includes(h.getAttribute('scope') ?? '')), `header cells of #${section} are scoped`);
      const lastRow = t.querySelector('thead tr:last-child')!;
      const firstBody = t.querySelector('tbody tr:not(.baseline-row)');
      if (firstBody && !firstBody.querySelector('[colspan]')) assert.equal(lastRow.querySelectorAll('th').length, firstBody.querySelectorAll('td').length, `one header cell per column in #${section}`);
    }
    // Focus order: the sequential navigation order (tabindex >= 0, not hidden, DOM order; no positive tabindex).
    assert.equal(root.querySelectorAll('[tabindex]:not([tabindex="0"]):not([tabindex="-1"])').length, 0, 'no positive tabindex reorders focus');
    const focusable = [...root.querySelectorAll('button, select, input, textarea, a[href], [tabindex="0"]')].filter((e) => !e.closest('[hidden]') && !(e as unknown as { disabled?: boolean }).disabled);
    const names = focusable.map((e) => {
      (e as unknown as { focus(): void }).focus();
      assert.equal(doc.activeElement, e, 'each control takes the focus');
      const id = e.getAttribute('id');
      const label = id ? root.querySelector(`label[for="${id}"]`)?.textContent?.trim() : undefined;
      return `${e.closest('section')?.id}:${label ?? e.textContent!.replace(/[▲▼]/g, '').trim()}`;
    });
    for (const want of ['results-table:Aux set', 'results-table:Defense', 'results-table:Copy as Markdown', 'results-table:Copy as CSV', 'results-table:Export CSV…', 'results-table:DER', 'model-diff:Purified model', 'model-diff:‖W′−W‖/‖W‖']) {
      assert.ok(names.includes(want), `Tab reaches ${want} (order: ${names.join(', ')})`);
    }
    assert.ok(names.indexOf('results-table:Aux set') < names.indexOf('results-table:DER') && names.indexOf('results-table:DER') < names.indexOf('model-diff:Purified model'), 'in reading order');
    // Every select has a label; every button has text.
    for (const e of focusable) {
      if (e.tagName === 'SELECT') assert.ok(root.querySelector(`label[for="${e.getAttribute('id')}"]`), 'select labelled');
      if (e.tagName === 'BUTTON') assert.ok(e.textContent!.trim().length > 0, 'button has text');
    }
    // The status is announced politely, once per change.
    const live = root.querySelector('[aria-live]')!;
    assert.equal(live.getAttribute('aria-live'), 'polite');
    assert.equal(live.getAttribute('role'), 'status');
    assert.equal(live.textContent, 'Done: 3 cells, 1 failed');
  });

  it('accessibility of the model inspector: its tables are named and their header cells scoped', () => {
    const { root, view } = mount();
    view.showInspect('/w/victim.pt', { format: 'pt', arch: 'small-cnn', layers: [{ name: 'features.0', kind: 'Conv2d', params: 80 }] });
    const tables = [...root.querySelectorAll('table')];
    assert.equal(tables.length, 2);
    for (const t of tables) {
      assert.ok((t.querySelector('caption')?.textContent ?? '').length > 5);
      assert.ok([...t.querySelectorAll('th')].every((h) => ['row', 'col'].includes(h.getAttribute('scope') ?? '')));
    }
    assert.equal(tables[1].querySelector('caption')!.textContent, 'Layers of victim.pt');
  });

  it('is hidden when no row has a diff (results of older versions)', () => {
    const { root, view } = mount();
    view.showResults(dom.state.fromResults({ id: 'r', title: 't', outDir: '/o' }, sampleResults()));
    assert.equal((root.querySelector('#model-diff') as unknown as { hidden: boolean }).hidden, true);
  });
});
