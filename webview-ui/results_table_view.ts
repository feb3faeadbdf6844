/**
 * The results table as a data tool: filter menus (aux set, defense), a sortable table of every run with the
 * best run per aux set by DER marked (colour, a star and words for screen readers), and buttons that copy the
 * shown rows as Markdown or CSV or export them as a CSV file. Filters and sort survive live updates. Controls
 * are native elements (select, button), so each is reached with Tab and used with the keyboard.
 */
import type { ResultRow } from '../src/shared/results';
import { sortableTable, type SortableTable } from './data_table';
import { bestByDer, distinct, filterRows, resultColumns, type ResultsFilter } from './results_table';
import { toCsv, toMarkdown, type Column } from './table_data';
import type { ViewState } from './state';

export interface TableActions {
  copyText(text: string): void;
  exportCsv(text: string): void;
}

let uid = 0;

function filterMenu(label: string, onChange: (v: string | undefined) => void): { wrap: HTMLElement; select: HTMLSelectElement; set(values: string[], current: string | undefined): void } {
  const id = `results-filter-${++uid}`;
  const wrap = document.createElement('span');
  const l = document.createElement('label');
  l.htmlFor = id;
  l.textContent = `${label} `;
  const select = document.createElement('select');
  select.id = id;
  select.addEventListener('change', () => onChange(select.value === '' ? undefined : select.value));
  wrap.append(l, select);
  return {
    wrap,
    select,
    set(values, current) {
      const all = document.createElement('option');
      all.value = '';
      all.textContent = 'all';
      select.replaceChildren(
        all,
        ...values.map((v) => {
          const o = document.createElement('option');
          o.value = v;
          o.textContent = v;
          return o;
        }),
      );
      select.value = current ?? '';
    },
  };
}

function toolButton(label: string, onClick: () => void, title: string): HTMLButtonElement {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'tool-button';
  b.textContent = label;
  b.title = title;
  b.addEventListener('click', onClick);
  return b;
}

export class ResultsTableView {
  private filter: ResultsFilter = {};
  private rows: ResultRow[] = [];
  private shownKey = '';
  private columns: Column<ResultRow>[] = resultColumns(false);
  private table?: SortableTable<ResultRow>;
  private readonly tableBox = document.createElement('div');
  private readonly count = document.createElement('span');
  private readonly auxMenu = filterMenu('Aux set', (v) => this.setFilter({ ...this.filter, aux: v }));
  private readonly defenseMenu = filterMenu('Defense', (v) => this.setFilter({ ...this.filter, defense: v }));

  constructor(
    body: HTMLElement,
    private readonly actions: TableActions,
  ) {
    const bar = document.createElement('div');
    bar.className = 'controls';
    bar.setAttribute('role', 'toolbar');
    bar.setAttribute('aria-label', 'Results table tools');
    this.count.className = 'muted';
    bar.append(
      this.auxMenu.wrap,
      this.defenseMenu.wrap,
      toolButton('Copy as Markdown', () => this.actions.copyText(toMarkdown(this.columns, this.shown())), 'Copy the rows shown, in this order, as a Markdown table'),
      toolButton('Copy as CSV', () => this.actions.copyText(toCsv(this.columns, this.shown())), 'Copy the rows shown as CSV (fractions as in results.json)'),
      toolButton('Export CSV…', () => this.actions.exportCsv(toCsv(this.columns, this.shown())), 'Save the rows shown as a CSV file'),
      this.count,
    );
    const legend = document.createElement('p');
    legend.className = 'muted';
    legend.textContent = '★ the best run of its aux set by DER. Click a column header (or focus it and press Enter) to sort.';
    body.append(bar, legend, this.tableBox);
  }

  /** The rows as shown: filtered, in the table's sort order. */
  shown(): ResultRow[] {
    return this.table?.shown() ?? [];
  }

  private setFilter(f: ResultsFilter): void {
    this.filter = f;
    this.draw();
  }

  /** Returns whether there is anything to show. */
  render(s: ViewState): boolean {
    const key = JSON.stringify(s.rows.map((r) => [r.aux, r.gic, r.defense, r.seed, r.acc, r.asr, r.der, r.error]));
    if (key === this.shownKey) return s.rows.length > 0;
    this.shownKey = key;
    this.rows = s.rows;
    const repeated = new Set(s.rows.map((r) => r.seed)).size > 1;
    this.columns = resultColumns(repeated);
    const auxes = distinct(s.rows, 'aux');
    const defenses = distinct(s.rows, 'defense');
    if (this.filter.aux !== undefined && !auxes.includes(this.filter.aux)) this.filter.aux = undefined;
    if (this.filter.defense !== undefined && !defenses.includes(this.filter.defense)) this.filter.defense = undefined;
    this.auxMenu.set(auxes, this.filter.aux);
    this.defenseMenu.set(defenses, this.filter.defense);
    this.draw();
    return s.rows.length > 0;
  }

  private draw(): void {
    const best = bestByDer(this.rows);
    const rows = filterRows(this.rows, this.filter);
    const sort = this.table?.sortState();
    this.table = sortableTable(this.columns, {
      caption: 'Every run: aux set, GIC, defense, ACC, ASR, RA, DER, seconds',
      hideCaption: true,
      className: 'grid data-table results-table',
      sort,
      rowClass: (r) => [best.has(r) ? 'best-row' : '', r.error ? 'error-row' : ''].filter(Boolean).join(' ') || undefined,
      cellContent: (c, r) => {
        if (c.key !== 'der' || !best.has(r)) return undefined;
        const f = document.createDocumentFragment();
        f.append(document.createTextNode(`${c.text!(r)} ★`));
        const sr = document.createElement('span');
        sr.className = 'visually-hidden';
        sr.textContent = ' (best DER of this aux set)';
        f.append(sr);
        return f;
      },
    });
    this.table.setRows(rows);
    this.tableBox.replaceChildren(this.table.table);
    this.count.textContent = `${rows.length} of ${this.rows.length} runs`;
  }
}
