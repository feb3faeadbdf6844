/**
 * The results as a flat table to work with: one line per run (aux set, GIC, defense, seed) with ACC, ASR, RA,
 * DER and seconds; filters by aux set and defense; the best line per aux set by DER marked. Columns are
 * table_data Columns, so sorting, Markdown and CSV all read the same values: CSV gets the raw fractions of
 * results.json, Markdown what the panel shows. Pure (no DOM), unit tested in Node.
 */
import type { ResultRow } from '../src/shared/results';
import { pct } from './format';
import type { Column } from './table_data';

export interface ResultsFilter {
  /** An aux set name, or undefined for all. */
  aux?: string;
  defense?: string;
}

const seconds = (r: ResultRow) => (typeof r.seconds === 'number' ? r.seconds : null);

/** The columns; the seed only when the job repeats. Failed runs show their error in the last column. */
export function resultColumns(repeated: boolean): Column<ResultRow>[] {
  const metric = (key: 'acc' | 'asr' | 'ra' | 'der', label: string): Column<ResultRow> => ({
    key,
    label,
    numeric: true,
    value: (r) => (r.error ? null : r[key]),
    text: (r) => (r.error ? '—' : pct(r[key])),
  });
  return [
    { key: 'aux', label: 'aux set', value: (r) => r.aux },
    { key: 'auxType', label: 'type', value: (r) => r.auxType },
    { key: 'gic', label: 'GIC', value: (r) => (r.gic ? 'on' : 'off') },
    { key: 'defense', label: 'defense', value: (r) => r.defense },
    ...(repeated ? [{ key: 'seed', label: 'seed', numeric: true, value: (r: ResultRow) => r.seed ?? null }] : []),
    metric('acc', 'ACC'),
    metric('asr', 'ASR'),
    metric('ra', 'RA'),
    metric('der', 'DER'),
    { key: 'seconds', label: 'seconds', numeric: true, value: seconds, text: (r) => (seconds(r) === null ? '—' : seconds(r)!.toFixed(1)) },
    { key: 'output', label: 'model / error', value: (r) => (r.error ? `failed: ${r.error}` : (r.output ?? '')) },
  ];
}

export function filterRows(rows: readonly ResultRow[], f: ResultsFilter): ResultRow[] {
  return rows.filter((r) => (f.aux === undefined || r.aux === f.aux) && (f.defense === undefined || r.defense === f.defense));
}

/** Distinct values in first-seen order (the filter menus). */
export function distinct(rows: readonly ResultRow[], key: 'aux' | 'defense'): string[] {
  return [...new Set(rows.map((r) => r[key]))];
}

/**
 * The best run per aux set (per aux set and seed when the job repeats) by DER: the highest DER among the runs
 * that succeeded and have one; ties are all best. Runs without a DER (no trigger known) are never best.
 */
export function bestByDer(rows: readonly ResultRow[]): Set<ResultRow> {
  const repeated = new Set(rows.map((r) => r.seed)).size > 1;
  const group = (r: ResultRow) => `${r.aux}\u0000${repeated ? (r.seed ?? '') : ''}`;
  const top = new Map<string, number>();
  for (const r of rows) {
    if (r.error || typeof r.der !== 'number' || !Number.isFinite(r.der)) continue;
    const k = group(r);
    top.set(k, Math.max(top.get(k) ?? -Infinity, r.der));
  }
  return new Set(rows.filter((r) => !r.error && typeof r.der === 'number' && r.der === top.get(group(r))));
}
