/**
 * The side-by-side table of the zoo comparison: our rows (scripts/zoo/run-defenses.ts) next to PyTorch's
 * reference rows (scripts/zoo/reference_defenses.py), mean ± sample standard deviation over seeds, per victim
 * and defense, as Markdown on stdout.
 *
 *   npx tsx scripts/zoo/compare.ts [--ours zoo/ours.json] [--reference zoo/reference.json]
 */
import * as fs from 'node:fs';
import { Command } from 'commander';

interface Row {
  victim: string;
  defense: string;
  seed: number;
  profile?: string;
  overrides?: Record<string, unknown>;
  acc: number | null;
  asr: number | null;
  error?: string | null;
  victimMetrics?: { acc: number; asr: number };
  seconds?: number;
}

const o = new Command()
  .option('--ours <file>', 'our rows', 'zoo/ours.json')
  .option('--reference <file>', "PyTorch's rows", 'zoo/reference.json')
  .parse()
  .opts<{ ours: string; reference: string }>();

const read = (f: string): Row[] => (fs.existsSync(f) ? (JSON.parse(fs.readFileSync(f, 'utf8')) as Row[]) : []);
const ours = read(o.ours);
const reference = read(o.reference);

function stats(xs: number[]): string {
  if (!xs.length) return '–';
  const m = xs.reduce((a, b) => a + b, 0) / xs.length;
  if (xs.length === 1) return m.toFixed(3);
  const sd = Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1));
  return `${m.toFixed(3)} ± ${sd.toFixed(3)}`;
}

const label = (r: Row) => `${r.profile ?? 'fast'}${r.overrides && Object.keys(r.overrides).length ? ` ${JSON.stringify(r.overrides)}` : ''}`;
const groups = new Map<string, Row[]>();
for (const r of ours) {
  const k = JSON.stringify([r.victim, r.defense, label(r)]);
  groups.set(k, [...(groups.get(k) ?? []), r]);
}
console.log('| victim | defense | our profile | n | our ACC | our ASR | PyTorch ACC | PyTorch ASR | victim ACC / ASR | our s/run |');
console.log('|---|---|---|---|---|---|---|---|---|---|');
for (const [k, rows] of [...groups.entries()].sort()) {
  const [victim, defense, profile] = JSON.parse(k) as string[];
  const ok = rows.filter((r) => !r.error && r.acc !== null);
  const ref = reference.filter((r) => r.victim === victim && r.defense === defense && r.acc !== null);
  const v = rows[0].victimMetrics;
  const errors = rows.filter((r) => r.error).length;
  const secs = ok.length ? (ok.reduce((a, r) => a + (r.seconds ?? 0), 0) / ok.length).toFixed(0) : '–';
  console.log(
    `| ${victim} | ${defense} | ${profile} | ${ok.length}${errors ? ` (+${errors} errors)` : ''} | ${stats(ok.map((r) => r.acc!))} | ${stats(ok.map((r) => r.asr!))} | ` +
      `${stats(ref.map((r) => r.acc!))} | ${stats(ref.map((r) => r.asr!))} | ${v ? `${v.acc.toFixed(3)} / ${v.asr.toFixed(3)}` : '–'} | ${secs} |`,
  );
}
