/**
 * What repeated runs say, folded from the rows of results.json: per (aux, defense, GIC) the mean and spread of
 * ACC, ASR and DER over the seeds (`summary`), and per (aux, defense) the paired GIC effect, GIC-on minus
 * GIC-off seed by seed, with a 95% t-interval (`gicEffect`). Pairing is what makes the interval narrow: the
 * two runs of a seed share their auxiliary sample and random stream, so their difference is GIC's alone.
 * Pure and computed from rows only, so the runner, `merge` (from merged rows) and the panel (from rows as they
 * arrive) all get the same numbers.
 */
import type { GicEffectEntry, Interval, ResultRow, Spread, SummaryEntry } from './results';
import { mean, sampleStd, tInterval } from './stats';

const METRICS = ['acc', 'asr', 'der'] as const;
type MetricName = (typeof METRICS)[number];

const value = (r: ResultRow, m: MetricName): number | undefined => {
  const v = r[m];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
};

/** Rows that count: finished without error. */
const ok = (r: ResultRow) => !r.error;

/** Groups in first-appearance order (the rows' cell order), so the output order is stable across runs. */
function groupBy<T>(items: T[], key: (t: T) => string): T[][] {
  const groups = new Map<string, T[]>();
  for (const it of items) {
    const k = key(it);
    const g = groups.get(k);
    if (g) g.push(it);
    else groups.set(k, [it]);
  }
  return [...groups.values()];
}

function spread(rows: ResultRow[], m: MetricName): Spread | null {
  const xs = rows.map((r) => value(r, m)).filter((v): v is number => v !== undefined);
  // A metric some runs lack (an unknown attack has no ASR) is not summarised over the others.
  if (xs.length === 0 || xs.length !== rows.length) return null;
  return { mean: mean(xs), std: sampleStd(xs) };
}

export function summarizeRows(rows: ResultRow[]): SummaryEntry[] {
  return groupBy(rows, (r) => `${r.aux}\u0000${r.defense}\u0000${r.gic ? 1 : 0}`).map((g) => {
    const good = g.filter(ok);
    const entry: SummaryEntry = { aux: g[0].aux, defense: g[0].defense, gic: g[0].gic, n: good.length, acc: null, asr: null, der: null };
    if (good.length) for (const m of METRICS) entry[m] = spread(good, m);
    return entry;
  });
}

/** The paired differences GIC on - off, one per seed where both runs succeeded. */
export function gicEffectOfRows(rows: ResultRow[]): GicEffectEntry[] {
  const out: GicEffectEntry[] = [];
  for (const g of groupBy(rows, (r) => `${r.aux}\u0000${r.defense}`)) {
    const off = new Map(g.filter((r) => !r.gic && ok(r)).map((r) => [r.seed, r] as const));
    const pairs = g.filter((r) => r.gic && ok(r) && off.has(r.seed)).map((on) => [off.get(on.seed)!, on] as const);
    if (!g.some((r) => r.gic) || !g.some((r) => !r.gic)) continue; // GIC ran only one way: nothing to pair
    const entry: GicEffectEntry = { aux: g[0].aux, defense: g[0].defense, n: pairs.length, acc: null, asr: null, der: null };
    for (const m of METRICS) {
      const d = pairs.map(([a, b]) => [value(a, m), value(b, m)] as const);
      if (d.length && d.every(([a, b]) => a !== undefined && b !== undefined)) entry[m] = tInterval(d.map(([a, b]) => b! - a!));
    }
    out.push(entry);
  }
  return out;
}

/** Whether an interval lies entirely on one side of zero (the difference is unlikely to be chance alone). */
export function excludesZero(i: Interval | null | undefined): boolean {
  return !!i && i.lo !== null && i.hi !== null && (i.lo > 0 || i.hi < 0);
}
