/**
 * The data side of the panel's tables: sorting, filtering and the Markdown / CSV text a user copies or exports.
 * Pure (no DOM) so that the orders and the exported text are unit tested in Node; data_table.ts draws.
 */

export type CellValue = number | string | null | undefined;

export interface Column<R> {
  key: string;
  label: string;
  /** Right-aligned, sorted as numbers (descending first: the largest change or score is what one looks for). */
  numeric?: boolean;
  /** The value sorted on and exported (numbers exported raw, so a spreadsheet gets full precision). */
  value: (r: R) => CellValue;
  /** What the cell shows; defaults to the value as text. */
  text?: (r: R) => string;
}

export type SortDir = 'ascending' | 'descending';

export interface SortState {
  key: string;
  dir: SortDir;
}

function isMissing(v: CellValue): boolean {
  return v === null || v === undefined || (typeof v === 'number' && !Number.isFinite(v));
}

/**
 * A stable sort by one column; missing values (null, n/a, failed cells) go last in either direction, so
 * sorting never hides a number behind a gap.
 */
export function sortRows<R>(rows: readonly R[], col: Column<R>, dir: SortDir): R[] {
  const sign = dir === 'ascending' ? 1 : -1;
  return rows
    .map((r, i) => ({ r, i, v: col.value(r) }))
    .sort((a, b) => {
      const ma = isMissing(a.v);
      const mb = isMissing(b.v);
      if (ma || mb) return ma === mb ? a.i - b.i : ma ? 1 : -1;
      const c = typeof a.v === 'number' && typeof b.v === 'number' ? a.v - b.v : String(a.v).localeCompare(String(b.v), undefined, { numeric: true });
      return c !== 0 ? sign * c : a.i - b.i;
    })
    .map((x) => x.r);
}

/** The direction a click on a header gives: the other one on the sorted column, else the column's natural one. */
export function nextSort<R>(current: SortState | undefined, col: Column<R>): SortState {
  if (current?.key === col.key) return { key: col.key, dir: current.dir === 'ascending' ? 'descending' : 'ascending' };
  return { key: col.key, dir: col.numeric ? 'descending' : 'ascending' };
}

export function cellText<R>(col: Column<R>, r: R): string {
  if (col.text) return col.text(r);
  const v = col.value(r);
  return isMissing(v) ? '' : String(v);
}

/** RFC 4180 CSV of the raw values: quotes around fields with a comma, quote or line break, quotes doubled. */
export function toCsv<R>(columns: readonly Column<R>[], rows: readonly R[]): string {
  const field = (v: CellValue) => {
    const s = isMissing(v) ? '' : String(v);
    // A leading =, +, - or @ would be a formula in a spreadsheet; a text field starting so is quoted with a '.
    const safe = typeof v === 'string' && /^[=+\-@\t\r]/.test(s) ? `'${s}` : s;
    return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
  };
  const lines = [columns.map((c) => field(c.label)).join(','), ...rows.map((r) => columns.map((c) => field(c.value(r))).join(','))];
  return lines.join('\r\n') + '\r\n';
}

/** A GitHub-flavoured Markdown table of what the cells show (pipes escaped, numeric columns right-aligned). */
export function toMarkdown<R>(columns: readonly Column<R>[], rows: readonly R[]): string {
  const esc = (s: string) => s.replace(/\\/g, '\\\\').replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
  const head = `| ${columns.map((c) => esc(c.label)).join(' | ')} |`;
  const rule = `| ${columns.map((c) => (c.numeric ? '---:' : '---')).join(' | ')} |`;
  const body = rows.map((r) => `| ${columns.map((c) => esc(cellText(c, r))).join(' | ')} |`);
  return [head, rule, ...body].join('\n') + '\n';
}
