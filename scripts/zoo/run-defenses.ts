/**
 * Our side of the zoo comparison: runs the engine's defenses on the PyTorch-made victims of
 * scripts/zoo/train_victims.py, on exactly the images PyTorch's reference used (the saved auxiliary sample and
 * triggered test set, read as .npy), through the same cell code as `backdoor-audit run`, and writes a JSON
 * table comparable with scripts/zoo/reference_defenses.py's.
 *
 *   npx tsx scripts/zoo/run-defenses.ts [--zoo zoo] [--victim preact-badnets ...] [--defense ft ...]
 *        [--seeds 0,1,2] [--profile fast|paper] [--params '{"epochs":10}'] [--out zoo/ours.json] [--workers N]
 *
 * Each row: victim, defense, seed, profile, effective params (from the row's details), acc, asr, ra, der,
 * seconds, and the victim's own acc/asr. The triggered images come from PyTorch's attack code, so the numbers
 * do not depend on our attack implementations.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command } from 'commander';
import { initBackend } from '../../src/engine/backend';
import { runPrepared, type PreparedJob } from '../../src/engine/jobs/core';
import { DEFENSES } from '../../src/engine/defenses';
import type { Profile } from '../../src/engine/defenses/defense';
import { readZooVictim } from './zoo_victim';

const program = new Command()
  .option('--zoo <dir>', 'the zoo folder', 'zoo')
  .option('--victim <name...>', 'victims (default: every folder with a victim.json)')
  .option('--defense <id...>', 'defenses', ['ft'])
  .option('--seeds <list>', 'comma-separated seeds', '0')
  .option('--profile <p>', 'fast or paper', 'fast')
  .option('--params <json>', 'parameter overrides for every defense', '{}')
  .option('--out <file>', 'results JSON (merged by victim/defense/seed/profile/params)', 'zoo/ours.json')
  .option('--workers <n>', 'cell workers (default: the runner default)')
  .parse();
const o = program.opts<{ zoo: string; victim?: string[]; defense: string[]; seeds: string; profile: Profile; params: string; out: string; workers?: string }>();

/**
 * The cells run in workers that load the built bundle (dist/cell-worker.js), not these sources: a bundle older
 * than any engine source would run yesterday's defenses under today's parameter names.
 */
function refuseStaleBundle(): void {
  const bundle = path.join(__dirname, '..', '..', 'dist', 'cell-worker.js');
  if (!fs.existsSync(bundle)) throw new Error('dist/cell-worker.js is missing: run `npm run build` first');
  const built = fs.statSync(bundle).mtimeMs;
  const walk = (dir: string): string[] => fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]));
  const newer = walk(path.join(__dirname, '..', '..', 'src')).filter((f) => fs.statSync(f).mtimeMs > built);
  if (newer.length) throw new Error(`dist/ is older than ${newer[0]} (and ${newer.length - 1} more): run \`npm run build\` first`);
}

async function main(): Promise<void> {
  refuseStaleBundle();
  const backend = await initBackend('auto');
  const victims = o.victim ?? fs.readdirSync(o.zoo).filter((d) => fs.existsSync(path.join(o.zoo, d, 'victim.json')));
  const overrides = JSON.parse(o.params) as Record<string, number>;
  for (const id of o.defense) if (!(id in DEFENSES)) throw new Error(`unknown defense ${id}`);
  const rows: Record<string, unknown>[] = fs.existsSync(o.out) ? JSON.parse(fs.readFileSync(o.out, 'utf8')) : [];
  const keyOf = (r: Record<string, unknown>) => JSON.stringify([r.victim, r.defense, r.seed, r.profile, r.overrides]);
  for (const name of victims) {
    const { info, loaded, aux, test, triggered } = readZooVictim(o.zoo, name);
    try {
      for (const seed of o.seeds.split(',').map(Number)) {
        const job: PreparedJob = {
          victim: loaded.model,
          model: loaded.info,
          test,
          triggered,
          aux: [{ name: 'unseen', type: 'unseen', seed, set: aux }],
          defenses: o.defense.map((id) => ({ id, profile: o.profile, params: Object.keys(overrides).length ? overrides : undefined })),
          gicMode: 'off',
          augment: { cropPadding: 4, flip: info.inputShape[2] === 3 },
          seeds: [seed],
        };
        const t0 = Date.now();
        const results = await runPrepared(job, {
          backend,
          workers: o.workers === undefined ? undefined : Number(o.workers),
          emit: (e) => {
            if (e.type === 'row') {
              const r = e.row;
              console.log(`${name} ${r.defense} seed ${seed}: ${r.error ? `error: ${r.error}` : `ACC ${r.acc?.toFixed(4)} ASR ${r.asr?.toFixed(4)} RA ${r.ra?.toFixed(4)} (${r.seconds.toFixed(1)} s)`}`);
            }
          },
        });
        for (const r of results.rows) {
          const row = {
            victim: name, defense: r.defense, seed, profile: o.profile, overrides,
            acc: r.acc ?? null, asr: r.asr ?? null, ra: r.ra ?? null, der: r.der ?? null, seconds: r.seconds, error: r.error,
            params: r.params ?? null, details: r.details ?? null, victimMetrics: results.baseline,
          };
          const k = keyOf(row);
          const at = rows.findIndex((x) => keyOf(x) === k);
          if (at >= 0) rows[at] = row;
          else rows.push(row);
        }
        console.log(`${name} seed ${seed}: baseline ACC ${results.baseline.acc.toFixed(4)} ASR ${results.baseline.asr?.toFixed(4)}; ${((Date.now() - t0) / 1000).toFixed(0)} s`);
        const tmp = `${o.out}.tmp`;
        fs.writeFileSync(tmp, JSON.stringify(rows, null, 1));
        fs.renameSync(tmp, o.out);
      }
    } finally {
      loaded.model.dispose();
    }
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.stack : e);
  process.exit(1);
});
