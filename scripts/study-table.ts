/**
 * The README table of a repeated study, from its results.json: per auxiliary set and defense, ACC and ASR with
 * GIC off and on as mean ± std over the seeds, and the paired GIC effect (on - off) on each with its 95%
 * t-interval, starred where the interval excludes zero. Printed as Markdown, so a measured run goes into the
 * README as it came out.
 *
 *   npx tsx scripts/study-table.ts OUT/results.json
 */
import * as fs from 'node:fs';
import type { Interval, Results, Spread } from '../src/shared/results';
import { excludesZero, gicEffectOfRows, summarizeRows } from '../src/shared/summary';

const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: npx tsx scripts/study-table.ts results.json\n');
  process.exit(2);
}
const r = JSON.parse(fs.readFileSync(file, 'utf8')) as Results;
const summary = r.summary ?? summarizeRows(r.rows);
const effects = r.gicEffect ?? gicEffectOfRows(r.rows);

const ms = (s: Spread | null | undefined) => (!s ? '—' : s.std === null ? (100 * s.mean).toFixed(1) : `${(100 * s.mean).toFixed(1)} ± ${(100 * s.std).toFixed(1)}`);
const signed = (v: number) => `${v >= 0 ? '+' : '−'}${Math.abs(100 * v).toFixed(1)}`;
const eff = (i: Interval | null | undefined) =>
  !i ? '—' : i.lo === null || i.hi === null ? signed(i.mean) : `${signed(i.mean)} [${signed(i.lo)}, ${signed(i.hi)}]${excludesZero(i) ? ' *' : ''}`;

const seeds = [...new Set(r.rows.map((x) => x.seed))];
const lines: string[] = [];
lines.push(`Baseline (no defense): ACC ${(100 * r.baseline.acc).toFixed(1)}%, ASR ${r.baseline.asr === null ? "n/a" : `${(100 * r.baseline.asr).toFixed(1)}%`}; ${seeds.length} seed${seeds.length === 1 ? '' : 's'} (${seeds.join(', ')}); percent, mean ± std; GIC effect = on − off in points, paired by seed, 95% t-interval, * excludes zero.`);
lines.push('');
lines.push('| aux (type) | defense | ACC off | ACC on | ASR off | ASR on | GIC effect on ACC | GIC effect on ASR |');
lines.push('|---|---|---|---|---|---|---|---|');
const keys: Array<{ aux: string; defense: string }> = [];
for (const s of summary) if (!keys.some((k) => k.aux === s.aux && k.defense === s.defense)) keys.push({ aux: s.aux, defense: s.defense });
for (const k of keys) {
  const off = summary.find((s) => s.aux === k.aux && s.defense === k.defense && !s.gic);
  const on = summary.find((s) => s.aux === k.aux && s.defense === k.defense && s.gic);
  const e = effects.find((x) => x.aux === k.aux && x.defense === k.defense);
  const type = r.rows.find((x) => x.aux === k.aux)?.auxType ?? '';
  lines.push(`| ${k.aux} (${type}) | ${k.defense} | ${ms(off?.acc)} | ${ms(on?.acc)} | ${ms(off?.asr)} | ${ms(on?.asr)} | ${eff(e?.acc)} | ${eff(e?.asr)} |`);
}
const failed = r.rows.filter((x) => x.error);
if (failed.length) lines.push('', `${failed.length} run${failed.length === 1 ? '' : 's'} failed: ${[...new Set(failed.map((x) => `${x.defense} on ${x.aux}: ${x.error}`))].join('; ')}`);
process.stdout.write(lines.join('\n') + '\n');
