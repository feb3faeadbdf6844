/**
 * `backdoor-audit`: the headless front end over the engine's job runner (SPEC section 9).
 * Exit codes: 0 success, 1 the job failed, 2 bad usage or bad input. Errors are one line on stderr,
 * `error: <what went wrong> (<file or field>)`, with the stack only under --verbose.
 */
import { Command, CommanderError } from 'commander';
import * as path from 'node:path';
import { InputError, CancelledError, oneLine } from './engine/errors';
import { SpareCellProcess } from './engine/jobs/cell_spawn';
import type { RunEvent } from './shared/run_events';
import type { Results } from './shared/results';

let verbose = false;

function fail(err: unknown): never {
  const code = err instanceof InputError ? 2 : (err as { exitCode?: number })?.exitCode === 2 ? 2 : 1;
  if (err instanceof CancelledError) {
    process.stderr.write('error: cancelled\n');
    process.exit(1);
  }
  process.stderr.write(`error: ${oneLine(err)}\n`);
  if (verbose && err instanceof Error && err.stack) process.stderr.write(err.stack + '\n');
  process.exit(code);
}

/** Cancel the running job on Ctrl-C: the runner stops between batches and writes nothing partial. */
function abortOnSignal(): AbortController {
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  process.once('SIGTERM', () => ac.abort());
  return ac;
}

async function printResults(results: Results): Promise<void> {
  const { formatResultsTable } = await import('./cli/table');
  process.stdout.write(formatResultsTable(results) + '\n');
}

async function reporter(): Promise<(e: RunEvent) => void> {
  const { createProgressReporter } = await import('./cli/progress');
  return createProgressReporter(process.stderr);
}

function parseWorkers(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new InputError(`--workers must be an integer from 1 to 64, got "${v}"`, '--workers');
  return n;
}

function parseMB(flag: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n) || n < 0) throw new InputError(`${flag} must be a number of megabytes >= 0 (0 = no limit), got "${v}"`, flag);
    return n;
  };
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('backdoor-audit')
    .description('Audit image classifiers for backdoors and purify them (headless engine of the Backdoor Audit extension).')
    .option('--verbose', 'print stack traces with errors')
    .hook('preAction', (cmd) => {
      verbose = Boolean(cmd.opts().verbose);
    })
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  program
    .command('run')
    .description('run a job file (audit.json)')
    .argument('<job>', 'path of the job file')
    .option('--out <dir>', 'output directory (default: <job dir>/audit-out)')
    .option('--device <device>', 'auto | gpu | cpu (overrides the job)')
    .option('--shard <i/n>', 'run only the i-th of n disjoint slices of the cells')
    .option('--workers <n>', 'processes running cells side by side, and the bound on threads (default: one per core on the CPU backends; 1 = none, on one thread)', parseWorkers)
    .option('--overwrite', 'replace purified models an earlier run wrote to the same output directory')
    .option('--max-model-mb <n>', 'refuse a model file larger than this (MB, default 2048; 0 = no limit)', parseMB('--max-model-mb'))
    .option('--max-data-mb <n>', 'refuse a data source larger than this on disk (MB, default 4096; 0 = no limit)', parseMB('--max-data-mb'))
    .action(async (job: string, opts: { out?: string; device?: string; shard?: string; overwrite?: boolean; workers?: number; maxModelMb?: number; maxDataMb?: number }) => {
      if (opts.device && !['auto', 'gpu', 'cpu'].includes(opts.device)) throw new InputError(`unknown device "${opts.device}"`, '--device');
      // A cell process forked now loads its bundle while this one loads the engine and prepares the job.
      const spare = SpareCellProcess.start({ workers: opts.workers, device: opts.device });
      const { runJobFile } = await import('./engine/jobs/runner');
      const outDir = path.resolve(opts.out ?? path.join(path.dirname(path.resolve(job)), 'audit-out'));
      const ac = abortOnSignal();
      const results = await runJobFile(path.resolve(job), {
        outDir,
        device: opts.device as 'auto' | 'gpu' | 'cpu' | undefined,
        signal: ac.signal,
        onEvent: await reporter(),
        overwrite: opts.overwrite,
        shard: opts.shard,
        workers: opts.workers,
        limits: { maxModelMB: opts.maxModelMb, maxDataMB: opts.maxDataMb },
        spare,
      });
      await printResults(results);
      process.stderr.write(`results: ${path.join(outDir, 'results.json')}\n`);
    });

  program
    .command('demo')
    .description('the embedded default end to end: BadNets victim on embedded MNIST, auxiliary sets, defenses with and without GIC')
    .option('--quick', 'a smaller run (about two minutes on 2 CPU cores)')
    .option('--out <dir>', 'output directory', 'backdoor-audit-demo')
    .option('--device <device>', 'auto | gpu | cpu', 'auto')
    .option('--workers <n>', 'processes running cells side by side, and the bound on threads (default: one per core on the CPU backends; 1 = none, on one thread)', parseWorkers)
    .action(async (opts: { quick?: boolean; out: string; device: string; workers?: number }) => {
      const { runDemo } = await import('./engine/jobs/demo');
      const ac = abortOnSignal();
      const outDir = path.resolve(opts.out);
      const results = await runDemo({ quick: Boolean(opts.quick), outDir, device: opts.device as 'auto', signal: ac.signal, onEvent: await reporter(), workers: opts.workers });
      await printResults(results);
      process.stderr.write(`results: ${path.join(outDir, 'results.json')}\n`);
    });

  program
    .command('merge')
    .description('merge the results.json of every shard of a sharded sweep (run --shard i/n) into one')
    .argument('<dirs...>', 'the shards\' output folders (or their results.json files)')
    .requiredOption('--out <dir>', 'folder for the merged results.json')
    .action(async (dirs: string[], opts: { out: string }) => {
      const { mergeShardDirs } = await import('./engine/jobs/merge');
      const { file, results } = mergeShardDirs(dirs.map((d) => path.resolve(d)), opts.out);
      await printResults(results);
      process.stderr.write(`results: ${file}\n`);
    });

  program
    .command('inspect')
    .description('format, detected architecture, input shape, classes, parameters and layers of a model file')
    .argument('<model>', 'model file (.pt, .pth, .safetensors, .onnx, model.json)')
    .option('--json', 'print JSON')
    .action(async (model: string, opts: { json?: boolean }) => {
      const { inspectModelFile, formatInspect } = await import('./engine/model_files/inspect');
      const info = await inspectModelFile(path.resolve(model));
      process.stdout.write(opts.json ? JSON.stringify(info, null, 2) + '\n' : formatInspect(info) + '\n');
    });

  program
    .command('diff')
    .description('what changed from model A to model B (same architecture, any formats): per layer the relative weight change, zeroed channels, BatchNorm statistics; inserted modules')
    .argument('<a>', 'the first model (e.g. the victim)')
    .argument('<b>', 'the second model (e.g. a purified model)')
    .option('--json', 'print JSON')
    .action(async (a: string, b: string, opts: { json?: boolean }) => {
      const { diffModelFiles, formatModelDiff } = await import('./engine/model_files/diff');
      const d = await diffModelFiles(path.resolve(a), path.resolve(b));
      process.stdout.write(opts.json ? JSON.stringify(d, null, 2) + '\n' : formatModelDiff(d) + '\n');
    });

  program
    .command('doctor')
    .description('what this machine offers a job: NVIDIA driver, CUDA/cuDNN, WebGPU adapter, each backend, ONNX Runtime, and what each device setting would run on')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const { runDoctor, formatDoctor } = await import('./engine/backend/doctor');
      const report = await runDoctor();
      process.stdout.write(opts.json ? JSON.stringify(report, null, 2) + '\n' : formatDoctor(report) + '\n');
    });

  program
    .command('bench')
    .description('benchmark suite: train/inference images/s, defenses, GIC, demo; PyTorch peer where installed')
    .option('--json <file>', 'also write the measurements as JSON')
    .option('--no-defenses', 'skip the per-defense wall times (a few minutes)')
    .option('--no-demo', 'skip the demo --quick run and the defense wall times: the model throughputs only')
    .option('--device <device>', 'auto | gpu | cpu: gpu measures the GPU backend that loads (CUDA, else WebGPU) or fails saying why', 'auto')
    .option('--purification [ids...]', 'defenses timed against PyTorch on a PyTorch-trained PreAct-ResNet18 (default: ft nad fp; all = every defense)')
    .option('--no-purification', 'skip the purification section')
    .option('--only-purification', 'run the purification section alone')
    .option('--victim <dir>', 'zoo victim folder of the purification section (default: test/fixtures/zoo/preact8-badnets)')
    .option('--whole-job', 'also time the whole default job (every defense) on that victim (tens of minutes)')
    .option('--repeat <n>', 'purification section: run each side n times per defense, alternated, and report the medians', '1')
    .action(async (opts: { json?: string; defenses: boolean; demo: boolean; device: string; purification?: string[] | boolean; onlyPurification?: boolean; victim?: string; wholeJob?: boolean; repeat: string }) => {
      if (!['auto', 'gpu', 'cpu'].includes(opts.device)) throw new InputError(`unknown device "${opts.device}"`, '--device');
      const repeat = Number(opts.repeat);
      if (!/^\d+$/.test(opts.repeat) || repeat < 1) throw new InputError(`must be a whole number of runs, 1 or more (got "${opts.repeat}")`, '--repeat');
      const { runBench } = await import('./engine/bench');
      const { parsePurification } = await import('./engine/bench_purify');
      await runBench({
        jsonPath: opts.json ? path.resolve(opts.json) : undefined,
        log: (s) => process.stderr.write(s + '\n'),
        skipDefenses: !opts.defenses,
        skipDemo: !opts.demo,
        device: opts.device as 'auto' | 'gpu' | 'cpu',
        purification: parsePurification(opts.purification),
        onlyPurification: opts.onlyPurification,
        victimDir: opts.victim ? path.resolve(opts.victim) : undefined,
        wholeJob: opts.wholeJob,
        repeat,
      });
    });

  return program;
}

async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version exit 0; everything else commander rejects is bad usage.
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') process.exit(0);
      process.exit(2);
    }
    fail(e);
  }
}

if (require.main === module) {
  void main(process.argv);
}
