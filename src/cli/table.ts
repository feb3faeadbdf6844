/** The results table the CLI prints on stdout (cli-table3), plain ASCII when stdout is not a terminal. */
import Table from 'cli-table3';
import type { Results } from '../engine/jobs/results';

const pct = (v: number | undefined) => (v === undefined || v === null ? '-' : (100 * v).toFixed(1));

export function formatResultsTable(r: Results, tty = Boolean(process.stdout.isTTY)): string {
  const style = tty ? {} : { chars: asciiChars(), style: { head: [], border: [] } };
  const lines: string[] = [];
  lines.push(`model ${r.model.arch} (${r.model.format}, ${r.model.params} parameters) on ${r.backend.name}, ${r.backend.threads} thread(s)`);
  lines.push(`baseline: ACC ${pct(r.baseline.acc)}  ASR ${pct(r.baseline.asr)}  RA ${pct(r.baseline.ra)}`);
  const t = new Table({ head: ['aux', 'type', 'GIC', 'defense', 'ACC %', 'ASR %', 'RA %', 'DER %', 's', 'error'], ...style });
  for (const row of r.rows) {
    t.push([row.aux, row.auxType, row.gic ? 'on' : 'off', row.defense, pct(row.acc), pct(row.asr), pct(row.ra), pct(row.der), row.seconds.toFixed(1), row.error ?? '']);
  }
  lines.push(t.toString());
  if (r.gic.length) {
    const g = new Table({ head: ['aux', 'delta', 'norm', 'max |g(x)-x|', 'conf before', 'conf after', 'BN dist before', 'BN dist after', 's'], ...style });
    for (const e of r.gic) {
      g.push([e.aux, e.delta, e.norm, e.maxPerturbation.toFixed(4), e.confidenceBefore.toFixed(3), e.confidenceAfter.toFixed(3), e.bnDistanceBefore?.toFixed(3) ?? '-', e.bnDistanceAfter?.toFixed(3) ?? '-', e.seconds.toFixed(1)]);
    }
    lines.push('GIC calibration:');
    lines.push(g.toString());
  }
  if (r.detection.nc) lines.push(`Neural Cleanse: flagged labels [${r.detection.nc.flagged.join(', ')}], anomaly index [${r.detection.nc.anomalyIndex.join(', ')}]`);
  return lines.join('\n');
}

function asciiChars(): Record<string, string> {
  return { top: '-', 'top-mid': '+', 'top-left': '+', 'top-right': '+', bottom: '-', 'bottom-mid': '+', 'bottom-left': '+', 'bottom-right': '+', left: '|', 'left-mid': '+', mid: '-', 'mid-mid': '+', right: '|', 'right-mid': '+', middle: '|' };
}
