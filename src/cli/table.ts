/**
 * The results table the CLI prints on stdout (cli-table3): the model and baseline, one row per cell
 * (auxiliary set x GIC x defense, and seed when the job repeats), a compact GIC table and the Neural Cleanse
 * verdict. With several seeds two more tables: mean +- std per (aux, defense, GIC), and the paired GIC effect
 * (on - off) with its 95% t-interval, starred where the interval excludes zero. When stdout is not a
 * terminal (a pipe, a CI log) the borders are plain ASCII and there are no colour codes, so the output can be
 * grepped and diffed.
 */
import Table from 'cli-table3';
import type { Interval, Results, Spread } from '../shared/results';
import { excludesZero } from '../shared/summary';

/** A fraction as a percentage with one decimal; 'n/a' where it cannot be measured (null: no trigger known), '-'
 * where there is no value (a failed cell). */
export function pct(v: number | null | undefined): string {
  if (v === null) return 'n/a';
  return v === undefined || !Number.isFinite(v) ? '-' : (100 * v).toFixed(1);
}

const num = (v: number | null | undefined, digits: number) => (v === undefined || v === null || !Number.isFinite(v) ? '-' : v.toFixed(digits));

/** Errors are one line already; the table keeps the first part, results.json has all of it. */
const ERROR_WIDTH = 60;
function clip(s: string, n: number): string {
  return s.length <= n ? s : s.slice(0, n - 3) + '...';
}

export interface TableOptions {
  /** Terminal output (box-drawing borders, coloured headers); default: whether stdout is a TTY. */
  tty?: boolean;
}

export function formatResultsTable(r: Results, opts: TableOptions | boolean = {}): string {
  const tty = typeof opts === 'boolean' ? opts : (opts.tty ?? Boolean(process.stdout.isTTY));
  const style = tty ? {} : { chars: ASCII, style: { head: [] as string[], border: [] as string[] } };
  const arrow = tty ? '→' : '->';
  const lines: string[] = [];
  const m = r.model;
  lines.push(`model: ${m.arch} (${m.format}, ${m.params.toLocaleString('en-US')} parameters, input ${m.inputShape.join('x')}, ${m.numClasses} classes) on ${r.backend.name}${r.backend.adapter ? ` (${r.backend.adapter})` : ''}, ${r.backend.threads} thread${r.backend.threads === 1 ? '' : 's'}`);
  lines.push(`baseline: ACC ${pct(r.baseline.acc)}%  ASR ${pct(r.baseline.asr)}%  RA ${pct(r.baseline.ra)}%`);

  const repeated = new Set(r.rows.map((row) => row.seed)).size > 1;
  if (r.rows.length) {
    const head = ['aux', 'type', 'GIC', 'defense', ...(repeated ? ['seed'] : []), 'ACC %', 'ASR %', 'RA %', 'DER %', 'seconds', 'error'];
    const t = new Table({ head, ...style });
    for (const row of r.rows) {
      const seed = repeated ? [String(row.seed ?? '-')] : [];
      t.push([row.aux, row.auxType, row.gic ? 'on' : 'off', row.defense, ...seed, pct(row.acc), pct(row.asr), pct(row.ra), pct(row.der), num(row.seconds, 1), row.error ? clip(row.error, ERROR_WIDTH) : '']);
    }
    lines.push(t.toString());
    if (repeated) lines.push(...repeatTables(r, tty, style));
  } else {
    lines.push('no defense was run (the job lists no defenses or no auxiliary sets)');
  }

  if (r.gic.length) {
    // One calibration per aux set and seed when the job repeats.
    const perSeed = new Set(r.gic.map((e) => e.seed)).size > 1;
    const g = new Table({ head: ['GIC on aux', ...(perSeed ? ['seed'] : []), 'bound', 'max / mean |g(x)-x|', 'confidence', 'BN distance', 'seconds'], ...style });
    for (const e of r.gic) {
      g.push([
        e.aux,
        ...(perSeed ? [String(e.seed ?? '-')] : []),
        `${e.norm === 'inf' ? 'Linf' : 'L2'} <= ${e.delta}`,
        `${num(e.maxPerturbation, 4)} / ${num(e.meanPerturbation, 4)}`,
        `${num(e.confidenceBefore, 3)} ${arrow} ${num(e.confidenceAfter, 3)}`,
        `${num(e.bnDistanceBefore, 3)} ${arrow} ${num(e.bnDistanceAfter, 3)}`,
        num(e.seconds, 1),
      ]);
    }
    lines.push(g.toString());
  }

  const nc = r.detection?.nc;
  if (nc) {
    const verdict = nc.flagged.length ? `flagged label${nc.flagged.length === 1 ? '' : 's'} ${nc.flagged.join(', ')}` : 'no label flagged';
    lines.push(`Neural Cleanse: ${verdict} (anomaly index per label: ${nc.anomalyIndex.map((a) => num(a, 2)).join(', ')})`);
  }
  return lines.join('\n');
}

/** Mean +- std of a fraction, in percent. */
function meanStd(s: Spread | null, pm: string): string {
  if (!s) return '-';
  return s.std === null ? pct(s.mean) : `${pct(s.mean)} ${pm} ${pct(s.std)}`;
}

/** A paired difference in percentage points with its interval, starred when the interval excludes zero. */
function effect(i: Interval | null): string {
  if (!i) return '-';
  const signed = (v: number) => `${v >= 0 ? '+' : ''}${(100 * v).toFixed(1)}`;
  const ci = i.lo === null || i.hi === null ? '' : ` [${signed(i.lo)}, ${signed(i.hi)}]`;
  return `${signed(i.mean)}${ci}${excludesZero(i) ? ' *' : ''}`;
}

function repeatTables(r: Results, tty: boolean, style: object): string[] {
  const pm = tty ? '±' : '+-';
  const out: string[] = [];
  if (r.summary?.length) {
    const t = new Table({ head: ['aux', 'defense', 'GIC', 'runs', `ACC % (mean ${pm} std)`, 'ASR %', 'DER %'], ...style });
    for (const e of r.summary) t.push([e.aux, e.defense, e.gic ? 'on' : 'off', String(e.n), meanStd(e.acc, pm), meanStd(e.asr, pm), meanStd(e.der, pm)]);
    out.push(t.toString());
  }
  if (r.gicEffect?.length) {
    const t = new Table({ head: ['aux', 'defense', 'pairs', 'GIC effect on ACC (points, 95% CI)', 'on ASR', 'on DER'], ...style });
    for (const e of r.gicEffect) t.push([e.aux, e.defense, String(e.n), effect(e.acc), effect(e.asr), effect(e.der)]);
    out.push(t.toString());
    out.push('GIC effect: GIC on minus off, paired by seed (same auxiliary sample and random stream); * the 95% t-interval excludes zero');
  }
  return out;
}

const ASCII = {
  top: '-',
  'top-mid': '+',
  'top-left': '+',
  'top-right': '+',
  bottom: '-',
  'bottom-mid': '+',
  'bottom-left': '+',
  'bottom-right': '+',
  left: '|',
  'left-mid': '+',
  mid: '-',
  'mid-mid': '+',
  right: '|',
  'right-mid': '+',
  middle: '|',
};
