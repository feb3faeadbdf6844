/**
 * The model diff view's numbers: which purified models have a diff (results rows carry one, see
 * src/shared/model_diff.ts), the per-layer table's columns, the bar chart's series and the sentences that
 * name the chart for a screen reader. Pure (no DOM, no chart library), so the shown values are unit tested.
 */
import { isModelDiff, type LayerDiff, type ModelDiff } from '../src/shared/model_diff';
import type { ResultRow } from '../src/shared/results';
import type { Column } from './table_data';
import type { ViewState } from './state';

export interface DiffChoice {
  /** Stable id of the row (aux, GIC, defense, seed). */
  key: string;
  label: string;
  row: ResultRow;
  diff: ModelDiff;
}

/** A purified model's name in the selector: `ft on heldout + GIC (seed 1)`. */
export function rowLabel(r: Pick<ResultRow, 'aux' | 'gic' | 'defense' | 'seed'>, seeds: boolean): string {
  return `${r.defense} on ${r.aux}${r.gic ? ' + GIC' : ''}${seeds && r.seed !== undefined ? ` (seed ${r.seed})` : ''}`;
}

/** Every successful row whose diff is well formed, in the rows' order. */
export function diffChoices(s: Pick<ViewState, 'rows'>): DiffChoice[] {
  const seeds = new Set(s.rows.map((r) => r.seed)).size > 1;
  return s.rows
    .filter((r) => !r.error && isModelDiff(r.diff))
    .map((r) => ({ key: `${r.aux}\u0000${r.gic ? 1 : 0}\u0000${r.defense}\u0000${r.seed ?? ''}`, label: rowLabel(r, seeds), row: r, diff: r.diff! }));
}

/** A relative change as text: 4 decimals, small values in exponent form, n/a where ||W|| was 0. */
export function relText(v: number | null | undefined): string {
  if (v === null) return 'n/a';
  if (typeof v !== 'number' || !Number.isFinite(v)) return '—';
  if (v === 0) return '0';
  return v < 1e-4 ? v.toExponential(2) : v.toFixed(4);
}

/** Channel lists stay short in a cell; the full list is in results.json and `backdoor-audit diff`. */
export function channelsText(c: readonly number[] | undefined, max = 16): string {
  if (!c || c.length === 0) return '';
  return c.length <= max ? c.join(', ') : `${c.slice(0, max).join(', ')} … (+${c.length - max})`;
}

export const DIFF_COLUMNS: Column<LayerDiff>[] = [
  { key: 'layer', label: 'layer', value: (l) => l.name },
  { key: 'kind', label: 'kind', value: (l) => l.kind },
  { key: 'params', label: 'params', numeric: true, value: (l) => l.params, text: (l) => l.params.toLocaleString('en-US') },
  { key: 'rel', label: '‖W′−W‖/‖W‖', numeric: true, value: (l) => l.relChange, text: (l) => relText(l.relChange) },
  { key: 'zeroedCount', label: 'zeroed', numeric: true, value: (l) => l.zeroed.length + (l.zeroedInputs?.length ?? 0) },
  {
    key: 'zeroed',
    label: 'zeroed channels',
    value: (l) => [channelsText(l.zeroed), l.zeroedInputs?.length ? `inputs ${channelsText(l.zeroedInputs)}` : ''].filter(Boolean).join('; '),
  },
  { key: 'bnMean', label: 'BN mean Δ', numeric: true, value: (l) => l.bnStats?.mean, text: (l) => (l.bnStats ? relText(l.bnStats.mean) : '') },
  { key: 'bnVar', label: 'BN var Δ', numeric: true, value: (l) => l.bnStats?.var, text: (l) => (l.bnStats ? relText(l.bnStats.var) : '') },
];

/** One line over the table: how much moved, what was zeroed or inserted. */
export function diffSummary(d: ModelDiff): string {
  const parts = [
    `relative weight change ${relText(d.relChange)}`,
    `${d.changedLayers} of ${d.layers.length} layers changed`,
    `${d.zeroedChannels} channel${d.zeroedChannels === 1 ? '' : 's'} zeroed`,
  ];
  const inputs = d.layers.reduce((s, l) => s + (l.zeroedInputs?.length ?? 0), 0);
  if (inputs) parts.push(`${inputs} input feature${inputs === 1 ? '' : 's'} zeroed`);
  for (const m of d.inserted) parts.push(`inserted ${m.name} (${m.params.toLocaleString('en-US')} parameters)`);
  for (const m of d.removed) parts.push(`removed ${m.name}`);
  return parts.join(' · ');
}

export interface DiffSeries {
  labels: string[];
  /** Relative change per layer (n/a drawn as 0). */
  values: number[];
  /** Layers with zeroed channels: drawn in the alarm colour. */
  zeroed: boolean[];
}

export function diffSeries(d: ModelDiff): DiffSeries {
  return {
    labels: d.layers.map((l) => l.name),
    values: d.layers.map((l) => l.relChange ?? 0),
    zeroed: d.layers.map((l) => l.zeroed.length + (l.zeroedInputs?.length ?? 0) > 0),
  };
}

/** The chart's accessible name: what it plots and its largest bars, as a screen reader user would ask. */
export function diffChartLabel(d: ModelDiff, label: string): string {
  const top = d.layers
    .filter((l) => (l.relChange ?? 0) > 0)
    .sort((a, b) => (b.relChange ?? 0) - (a.relChange ?? 0))
    .slice(0, 3)
    .map((l) => `${l.name} ${relText(l.relChange)}`);
  const zeroed = d.layers.filter((l) => l.zeroed.length).map((l) => `${l.name} (${l.zeroed.length})`);
  return [
    `Bar chart: relative weight change per layer of ${label}, ${d.layers.length} layers`,
    top.length ? `largest: ${top.join(', ')}` : 'no layer changed',
    zeroed.length ? `zeroed channels in ${zeroed.join(', ')}` : '',
  ]
    .filter(Boolean)
    .join('; ') + '. The table below lists every layer.';
}
