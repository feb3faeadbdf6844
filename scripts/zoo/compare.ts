/**
 * The side-by-side table of the zoo comparison: our rows (scripts/zoo/run-defenses.ts) next to PyTorch's
 * reference rows (scripts/zoo/reference_defenses.py), mean ± sample standard deviation over seeds, per victim
 * and defense, as Markdown on stdout.
 *
 *   npx tsx scripts/zoo/compare.ts [--ours zoo/ours.json ...] [--reference zoo/reference.json ...]
 *
 * Several files of a side are read in order; a later row replaces an earlier one of the same victim, defense,
 * seed, profile and overrides (for a reference row: victim, defense, seed and params). `meets`: ASR at most half
 * the victim's and ACC at most 0.05 below it (issue 13's criterion); each victim ends with the median ACC drop.
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
  params?: Record<string, unknown>;
  details?: Record<string, unknown> | null;
}

const o = new Command()
  .option('--ours <file...>', 'our rows', ['zoo/ours.json'])
  .option('--reference <file...>', "PyTorch's rows", ['zoo/reference.json'])
  .parse()
  .opts<{ ours: string[]; reference: string[] }>();

function read(files: string[], key: (r: Row) => string): Row[] {
  const byKey = new Map<string, Row>();
  for (const f of files) if (fs.existsSync(f)) for (const r of JSON.parse(fs.readFileSync(f, 'utf8')) as Row[]) byKey.set(key(r), r);
  return [...byKey.values()];
}
const ours = read(o.ours, (r) => JSON.stringify([r.victim, r.defense, r.seed, r.profile ?? 'fast', r.overrides ?? {}]));
const reference = read(o.reference, (r) => JSON.stringify([r.victim, r.defense, r.seed, r.params ?? {}]));

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
console.log('| victim | defense | our profile | n | our ACC | our ASR | meets | PyTorch ACC | PyTorch ASR (n) | victim ACC / ASR | our s/run |');
console.log('|---|---|---|---|---|---|---|---|---|---|---|');
const drops = new Map<string, number[]>();
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
for (const [k, rows] of [...groups.entries()].sort()) {
  const [victim, defense, profile] = JSON.parse(k) as string[];
  const ok = rows.filter((r) => !r.error && r.acc !== null);
  // PyTorch rows of the same epochs and batch as ours where the row says them, else every row of the defense.
  const sameRecipe = (r: Row) => {
    const d = (ok[0]?.params ?? ok[0]?.details) as Record<string, unknown> | undefined;
    const same = (k: string) => d?.[k] === undefined || r.params?.[k] === undefined || d[k] === r.params[k];
    // A reference row that names its profile (ANP's: fast, paper, fast-clip-noise) counts only for that profile.
    const refProfile = (r as Row & { profile?: string }).profile;
    return same('epochs') && same('batchSize') && (refProfile === undefined || refProfile === (rows[0].profile ?? 'fast'));
  };
  const ref = reference.filter((r) => r.victim === victim && r.defense === defense && r.acc !== null && sameRecipe(r));
  const v = rows[0].victimMetrics;
  const errors = rows.filter((r) => r.error).length;
  const secs = ok.length ? (ok.reduce((a, r) => a + (r.seconds ?? 0), 0) / ok.length).toFixed(0) : '–';
  let meets = '–';
  if (v && ok.length) {
    const acc = mean(ok.map((r) => r.acc!));
    const asr = mean(ok.map((r) => r.asr ?? 0));
    meets = asr <= 0.5 * v.asr && acc >= v.acc - 0.05 ? 'yes' : 'no';
    if (profile === 'fast') drops.set(victim, [...(drops.get(victim) ?? []), v.acc - acc]);
  }
  console.log(
    `| ${victim} | ${defense} | ${profile} | ${ok.length}${errors ? ` (+${errors} errors)` : ''} | ${stats(ok.map((r) => r.acc!))} | ${stats(ok.map((r) => r.asr!))} | ${meets} | ` +
      `${stats(ref.map((r) => r.acc!))} | ${stats(ref.map((r) => r.asr!))}${ref.length ? ` (${ref.length})` : ''} | ${v ? `${v.acc.toFixed(3)} / ${v.asr.toFixed(3)}` : '–'} | ${secs} |`,
  );
}
console.log('');
for (const [victim, ds] of [...drops.entries()].sort()) {
  const s = [...ds].sort((a, b) => a - b);
  const median = s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  console.log(`${victim}: median ACC drop over ${s.length} defenses (fast profile) ${median.toFixed(3)}`);
}
