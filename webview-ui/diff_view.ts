/**
 * The model diff view: for the purified model picked in a selector, a bar chart of the relative weight change
 * per layer (layers with zeroed channels in the alarm colour) and the sortable per-layer table. The chart
 * canvas is named for screen readers by a summary (role="img", aria-label); the table holds every number.
 * Redrawn only when the set of diffs or the choice changes: live events repeat the same rows.
 */
import type { Charts } from './charts';
import { sortableTable, type SortableTable } from './data_table';
import { DIFF_COLUMNS, diffChartLabel, diffChoices, diffSeries, diffSummary, type DiffChoice } from './diff_format';
import type { LayerDiff } from '../src/shared/model_diff';
import type { ViewState } from './state';

let uid = 0;

export class DiffView {
  private chosen?: string;
  private shownKey = '';
  private readonly select = document.createElement('select');
  private readonly summary = document.createElement('p');
  private readonly canvas = document.createElement('canvas');
  private readonly tableBox = document.createElement('div');
  private table?: SortableTable<LayerDiff>;
  private choices: DiffChoice[] = [];

  constructor(
    private readonly body: HTMLElement,
    private readonly charts: () => Charts,
  ) {
    const id = `diff-select-${++uid}`;
    const bar = document.createElement('div');
    bar.className = 'controls';
    const label = document.createElement('label');
    label.htmlFor = id;
    label.textContent = 'Purified model ';
    this.select.id = id;
    this.select.addEventListener('change', () => {
      this.chosen = this.select.value;
      this.draw();
    });
    bar.append(label, this.select);
    this.summary.className = 'diff-summary';
    this.canvas.setAttribute('role', 'img');
    const box = document.createElement('div');
    box.className = 'chart-box diff-chart';
    box.append(this.canvas);
    this.body.append(bar, this.summary, box, this.tableBox);
  }

  /** Draw again at the next render (the charts were rebuilt for a new theme). */
  invalidate(): void {
    this.shownKey = '';
  }

  /** Returns whether any row has a diff (the section is hidden otherwise). */
  render(s: ViewState): boolean {
    this.choices = diffChoices(s);
    const key = this.choices.map((c) => c.key).join('\u0001');
    if (key !== this.shownKey) {
      this.shownKey = key;
      this.select.replaceChildren(
        ...this.choices.map((c) => {
          const o = document.createElement('option');
          o.value = c.key;
          o.textContent = c.label;
          return o;
        }),
      );
      if (!this.choices.some((c) => c.key === this.chosen)) this.chosen = this.choices[0]?.key;
      if (this.chosen !== undefined) this.select.value = this.chosen;
      this.draw();
    }
    return this.choices.length > 0;
  }

  private draw(): void {
    const c = this.choices.find((x) => x.key === this.chosen);
    if (!c) return;
    this.summary.textContent = diffSummary(c.diff);
    const charts = this.charts();
    const series = diffSeries(c.diff);
    const changed = charts.colour('acc');
    const zeroed = charts.colour('asr');
    charts.renderSimpleBars('model-diff', this.canvas, {
      labels: series.labels,
      values: series.values,
      colours: series.zeroed.map((z) => (z ? zeroed : changed)),
      seriesLabel: '‖W′−W‖/‖W‖',
      yTitle: '‖W′−W‖ / ‖W‖',
    });
    this.canvas.setAttribute('aria-label', diffChartLabel(c.diff, c.label));
    this.table = sortableTable(DIFF_COLUMNS, {
      caption: `Per-layer changes of ${c.label}`,
      className: 'grid data-table diff-table',
      sort: this.table?.sortState(),
      rowClass: (l) => (l.zeroed.length || l.zeroedInputs?.length ? 'zeroed-row' : undefined),
    });
    this.table.setRows(c.diff.layers);
    this.tableBox.replaceChildren(this.table.table);
  }
}
