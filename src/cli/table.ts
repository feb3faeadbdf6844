/**
 * The results table the CLI prints on stdout (cli-table3): the model and baseline, one row per cell
 * (auxiliary set x GIC x defense), a compact GIC table and the Neural Cleanse verdict. When stdout is not a
 * terminal (a pipe, a CI log) the borders are plain ASCII and there are no colour codes, so the output can be
 * grepped and diffed.
 */
import Table from 'cli-table3';
import type { Results } from '../engine/jobs/results';

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
  lines.push(`model: ${m.arch} (${m.format}, ${m.params.toLocaleString('en-US')} parameters, input ${m.inputShape.join('x')}, ${m.numClasses} classes) on ${r.backend.name}, ${r.backend.threads} thread${r.backend.threads === 1 ? '' : 's'}`);
  lines.push(`baseline: ACC ${pct(r.baseline.acc)}%  ASR ${pct(r.baseline.asr)}%  RA ${pct(r.baseline.ra)}%`);

  if (r.rows.length) {
    const t = new Table({ head: ['aux', 'type', 'GIC', 'defense', 'ACC %', 'ASR %', 'RA %', 'DER %', 'seconds', 'error'], ...style });
    for (const row of r.rows) {
      t.push([row.aux, row.auxType, row.gic ? 'on' : 'off', row.defense, pct(row.acc), pct(row.asr), pct(row.ra), pct(row.der), num(row.seconds, 1), row.error ? clip(row.error, ERROR_WIDTH) : '']);
    }
    lines.push(t.toString());
  } else {
    lines.push('no defense was run (the job lists no defenses or no auxiliary sets)');
  }

  if (r.gic.length) {
    const g = new Table({ head: ['GIC on aux', 'bound', 'max / mean |g(x)-x|', 'confidence', 'BN distance', 'seconds'], ...style });
    for (const e of r.gic) {
      g.push([
        e.aux,
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
