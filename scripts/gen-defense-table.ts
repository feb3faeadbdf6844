/**
 * Prints the README's table of defense parameters from the code (each defense's `defaults` for both profiles
 * and its named departures from BackdoorBench's config values), so the documented defaults cannot drift from
 * the ones that run:  npx tsx scripts/gen-defense-table.ts
 */
import { DEFENSES } from '../src/engine/defenses';
import type { DefenseParams } from '../src/engine/defenses/defense';

const show = (p: DefenseParams) =>
  Object.entries(p)
    .map(([k, v]) => `${k} ${Array.isArray(v) ? v.join('/') : v}`)
    .join(', ');

console.log('| defense | `paper` (BackdoorBench) | `fast` (default): what differs from `paper` | departures from BackdoorBench |');
console.log('|---|---|---|---|');
for (const d of Object.values(DEFENSES)) {
  const paper = d.defaults('paper');
  const fast = d.defaults('fast');
  const diff: DefenseParams = {};
  for (const [k, v] of Object.entries(fast)) if (JSON.stringify(paper[k]) !== JSON.stringify(v)) diff[k] = v;
  const departures = [d.departures?.('paper') && `paper: ${d.departures('paper')}`, d.departures?.('fast') && `fast: ${d.departures('fast')}`].filter(Boolean).join('; ');
  console.log(`| \`${d.id}\` | ${show(paper)} | ${Object.keys(diff).length ? show(diff) : 'the same'} | ${departures || '–'} |`);
}
