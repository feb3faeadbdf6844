/**
 * Our defense on PyTorch's random draws: runs an engine defense on a zoo victim with the shuffles and crop
 * offsets that scripts/zoo/reference_defenses.py recorded for one of its runs (`--record-stream DIR`), so that
 * both sides train on the same batches of the same crops. What is left between the two rows is the
 * implementation (kernels, rounding, the update rule), not the random stream: the seed-to-seed spread of these
 * recipes on 500 images (single FT seeds on the zoo's Blended victim: ASR 0.08 to 0.64) hides a systematic
 * difference that a comparison of independent streams would need hundreds of seeds to see.
 *
 *   /usr/bin/python3 scripts/zoo/reference_defenses.py --victim V --defense ft --recipe fast --seeds 0 1 2 \
 *       --record-stream zoo/streams --out zoo/ref-replay.json
 *   npx tsx scripts/zoo/replay-stream.ts --stream zoo/streams/V-ft-seed0.json [...] [--reference zoo/ref-replay.json]
 *       [--profile paper]
 *
 * `ft`, `nad` and `ftsam` draw nothing else and replay to the end; a defense that draws anything else (`fst`
 * forks a stream for its new head) stops at that draw. The defense runs in this process on one ONNX Runtime
 * thread with the parameters of the engine's `--profile` (fast unless given), checked against the recorded run's
 * (epochs, batch size, rate, momentum, weight decay): a recipe that differs is refused. Every draw the
 * defense makes must be one the recording holds, in order, and every recorded draw must be used: anything else
 * (a draw of another kind, a permutation of another length, draws left over) stops the replay with the place
 * where the two streams part. Prints ACC/ASR/RA per stream and, with `--reference`, PyTorch's row of the same
 * run and the differences; `--out` writes them as JSON.
 */
import * as fs from 'node:fs';
import { Command } from 'commander';
import { initBackend } from '../../src/engine/backend';
import { evaluateModelFast } from '../../src/engine/metrics/evaluate';
import { getDefense } from '../../src/engine/defenses';
import { newTrainingRecord, resolveParams } from '../../src/engine/defenses/defense';
import { ortTrainWanted } from '../../src/engine/nn/ort_train';
import { ReplayRng, type Draw } from '../../test/helpers/replay_rng';
import { readZooVictim } from './zoo_victim';

interface Recording {
  victim: string;
  defense: string;
  seed: number;
  params: Record<string, unknown>;
  draws: Draw[];
}

const program = new Command()
  .requiredOption('--stream <files...>', 'recordings of reference_defenses.py --record-stream')
  .option('--zoo <dir>', 'the zoo folder', 'zoo')
  .option('--reference <file>', "reference_defenses.py's --out of the recorded runs, to set beside ours")
  .option('--out <file>', 'write the rows as JSON')
  .option('--profile <p>', "the engine's profile to replay with: fast or paper", 'fast')
  .parse();
const o = program.opts<{ stream: string[]; zoo: string; reference?: string; out?: string; profile: string }>();
if (o.profile !== 'fast' && o.profile !== 'paper') throw new Error(`--profile: fast or paper, not ${o.profile}`);
const profile = o.profile;

/** The recipe values both sides must share; the recording's names are BackdoorBench's, ours the engine's. */
const SHARED = ['epochs', 'batchSize', 'lr', 'momentum', 'weightDecay'];

/** Each victim's model and images, read once however many of its streams are replayed. */
const victims = new Map<string, ReturnType<typeof readZooVictim>>();
function victimOf(name: string): ReturnType<typeof readZooVictim> {
  if (!victims.has(name)) victims.set(name, readZooVictim(o.zoo, name));
  return victims.get(name)!;
}

async function main(): Promise<void> {
  await initBackend('cpu');
  if (!ortTrainWanted()) throw new Error('ONNX Runtime does not load here (or BACKDOOR_AUDIT_ORT_TRAIN=0): the replay measures its path');
  const reference: Record<string, unknown>[] = o.reference ? JSON.parse(fs.readFileSync(o.reference, 'utf8')) : [];
  const rows: Record<string, unknown>[] = [];
  for (const file of o.stream) {
    const rec = JSON.parse(fs.readFileSync(file, 'utf8')) as Recording;
    const defense = getDefense(rec.defense);
    if (!defense) throw new Error(`${file}: unknown defense ${rec.defense}`);
    const { loaded, aux, test, triggered } = victimOf(rec.victim);
    const params = resolveParams(defense, profile, {});
    for (const k of SHARED) {
      if (k in params && k in rec.params && params[k] !== rec.params[k]) throw new Error(`${file}: ${k} ${String(rec.params[k])} recorded, ${String(params[k])} in the engine's ${profile} profile`);
    }
    const cropPadding = 4;
    const rng = new ReplayRng(rec.draws, 2 * cropPadding + 1);
    const t0 = Date.now();
    const out = await defense.run({
      victim: loaded.model, aux, profile, params, augment: { cropPadding, flip: false }, rng,
      progress: () => undefined, ortTraining: true, ortThreads: 1, training: newTrainingRecord(),
    });
    const seconds = (Date.now() - t0) / 1000;
    try {
      rng.finish();
      const m = await evaluateModelFast(out.model, test, triggered, undefined, 2);
      const ref = reference.find((r) => r.victim === rec.victim && r.defense === rec.defense && r.seed === rec.seed) as { acc: number; asr: number; ra: number } | undefined;
      const row = { victim: rec.victim, defense: rec.defense, seed: rec.seed, profile, acc: m.acc, asr: m.asr, ra: m.ra, seconds, reference: ref ? { acc: ref.acc, asr: ref.asr, ra: ref.ra } : undefined };
      rows.push(row);
      const vs = ref ? `; PyTorch ACC ${ref.acc.toFixed(4)} ASR ${ref.asr.toFixed(4)} (ours - PyTorch: ${(m.acc - ref.acc).toFixed(4)} / ${(m.asr! - ref.asr).toFixed(4)})` : '';
      console.log(`${rec.victim} ${rec.defense} seed ${rec.seed}, PyTorch's draws: ACC ${m.acc.toFixed(4)} ASR ${m.asr!.toFixed(4)} RA ${m.ra!.toFixed(4)} (${seconds.toFixed(1)} s)${vs}`);
    } finally {
      out.model.dispose();
    }
  }
  for (const v of victims.values()) v.loaded.model.dispose();
  const paired = rows.filter((r) => r.reference) as { acc: number; asr: number; reference: { acc: number; asr: number } }[];
  if (paired.length > 1) {
    const mean = (f: (r: (typeof paired)[number]) => number) => paired.reduce((s, r) => s + f(r), 0) / paired.length;
    console.log(`mean over ${paired.length}: ours ${mean((r) => r.acc).toFixed(4)} / ${mean((r) => r.asr).toFixed(4)}, PyTorch ${mean((r) => r.reference.acc).toFixed(4)} / ${mean((r) => r.reference.asr).toFixed(4)}; mean |difference| ${mean((r) => Math.abs(r.acc - r.reference.acc)).toFixed(4)} / ${mean((r) => Math.abs(r.asr - r.reference.asr)).toFixed(4)}`);
  }
  if (o.out) {
    const tmp = `${o.out}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(rows, null, 1));
    fs.renameSync(tmp, o.out);
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
