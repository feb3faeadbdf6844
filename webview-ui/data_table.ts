/**
 * A sortable table for the panel and report.html: header cells (`th scope="col"`) holding a button each, so a
 * column sorts by mouse or keyboard (Tab to it, Enter or Space), and `aria-sort` says the order to a screen
 * reader. The order and the text come from table_data.ts; this module only builds elements.
 */
import { cellText, nextSort, sortRows, type Column, type SortState } from './table_data';

export interface TableOptions<R> {
  /** The table's accessible name (a caption element; visually hidden when `hideCaption`). */
  caption: string;
  hideCaption?: boolean;
  className?: string;
  sort?: SortState;
  rowClass?: (r: R) => string | undefined;
  /** Extra classes of one cell (e.g. a highlighted value). */
  cellClass?: (col: Column<R>, r: R) => string | undefined;
  /** Replaces a cell's text with elements (links); return undefined to keep the text. */
  cellContent?: (col: Column<R>, r: R) => Node | undefined;
  /** Called after every sort, with the rows in their new order (copy and export use it). */
  onSort?: (s: SortState) => void;
}

export interface SortableTable<R> {
  table: HTMLTableElement;
  setRows(rows: readonly R[]): void;
  /** The rows as shown (sorted). */
  shown(): R[];
  sortState(): SortState | undefined;
}

export function sortableTable<R>(columns: readonly Column<R>[], o: TableOptions<R>): SortableTable<R> {
  const table = document.createElement('table');
  table.className = o.className ?? 'grid data-table';
  const caption = document.createElement('caption');
  caption.textContent = o.caption;
  if (o.hideCaption) caption.className = 'visually-hidden';
  const thead = document.createElement('thead');
  const hr = document.createElement('tr');
  const tbody = document.createElement('tbody');
  let rows: readonly R[] = [];
  let sort = o.sort;
  let shown: R[] = [];
  const ths = columns.map((c) => {
    const th = document.createElement('th');
    th.scope = 'col';
    if (c.numeric) th.className = 'num';
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'sort-button';
    b.textContent = c.label;
    const arrow = document.createElement('span');
    arrow.className = 'sort-arrow';
    arrow.setAttribute('aria-hidden', 'true');
    b.append(arrow);
    b.addEventListener('click', () => {
      sort = nextSort(sort, c);
      draw();
      o.onSort?.(sort);
    });
    th.append(b);
    hr.append(th);
    return th;
  });
  thead.append(hr);
  table.append(caption, thead, tbody);

  function draw(): void {
    const col = sort ? columns.find((c) => c.key === sort!.key) : undefined;
    shown = col && sort ? sortRows(rows, col, sort.dir) : rows.slice();
    columns.forEach((c, i) => {
      const dir = sort?.key === c.key ? sort.dir : undefined;
      ths[i].setAttribute('aria-sort', dir ?? 'none');
      (ths[i].querySelector('.sort-arrow') as HTMLElement).textContent = dir === 'ascending' ? ' ▲' : dir === 'descending' ? ' ▼' : '';
    });
    tbody.replaceChildren(
      ...shown.map((r) => {
        const tr = document.createElement('tr');
        const rc = o.rowClass?.(r);
        if (rc) tr.className = rc;
        for (const c of columns) {
          const td = document.createElement('td');
          td.className = [c.numeric ? 'num' : '', o.cellClass?.(c, r) ?? ''].filter(Boolean).join(' ');
          const content = o.cellContent?.(c, r);
          if (content) td.append(content);
          else td.textContent = cellText(c, r);
          tr.append(td);
        }
        return tr;
      }),
    );
  }

  return {
    table,
    setRows(r) {
      rows = r;
      draw();
    },
    shown: () => shown.slice(),
    sortState: () => sort,
  };
}
