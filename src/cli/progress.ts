/**
 * Progress of a running job on stderr (stdout is kept for the results table). On a terminal: one
 * cli-progress bar for the current stage, replaced when the stage changes. Elsewhere (pipes, CI logs, the
 * extension's output channel): plain lines `[stage] done/total message`, at most one per stage every
 * `intervalMs` plus the first and the last of each stage, so a long training loop does not flood a log.
 * Rows, the baseline and log messages are printed as lines in both modes.
 */
import { SingleBar, Presets } from 'cli-progress';
import type { RunEvent } from '../shared/run_events';

/** The part of a stream the reporter needs (process.stderr, or a test double). */
export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
}

export interface ProgressOptions {
  /** Bars or plain lines; default: whether the stream is a TTY. */
  tty?: boolean;
  /** Minimum time between two plain lines of one stage; default 2000 ms. */
  intervalMs?: number;
  /** Clock, for tests. */
  now?: () => number;
}

export type ProgressReporter = ((e: RunEvent) => void) & { stop(): void };

// null: not measurable (no trigger known, or RA without true labels).
const pct1 = (v: number | null | undefined) => (v === null ? 'n/a' : v === undefined ? '-' : `${(100 * v).toFixed(1)}%`);

function rowLine(r: Extract<RunEvent, { type: 'row' }>['row']): string {
  const what = `${r.defense} on ${r.aux}${r.gic ? ' + GIC' : ''}`;
  if (r.error) return `${what}: error: ${r.error}`;
  return `${what}: ACC ${pct1(r.acc)} ASR ${pct1(r.asr)} RA ${pct1(r.ra)} DER ${pct1(r.der)} (${r.seconds.toFixed(1)} s)`;
}

export function createProgressReporter(out: ProgressStream, opts: ProgressOptions = {}): ProgressReporter {
  const tty = opts.tty ?? Boolean(out.isTTY);
  const interval = opts.intervalMs ?? 2000;
  const now = opts.now ?? Date.now;
  let bar: SingleBar | undefined;
  let barStage = '';
  // Per stage: when its last line was printed and whether its final line was, so interleaved stages
  // (GIC of one set while a defense reports) are limited independently.
  const printed = new Map<string, { at: number; last: string }>();

  const stopBar = () => {
    bar?.stop();
    bar = undefined;
    barStage = '';
  };
  const line = (s: string) => {
    stopBar(); // a line written under a live bar would be overdrawn by its next redraw
    out.write(s + '\n');
  };

  const progress = (e: Extract<RunEvent, { type: 'progress' }>) => {
    const msg = e.message ?? '';
    if (tty) {
      if (e.stage !== barStage) {
        stopBar();
        barStage = e.stage;
        const label = e.stage.length > 32 ? e.stage.slice(0, 31) + '…' : e.stage.padEnd(32);
        bar = new SingleBar(
          { format: `${label} [{bar}] {value}/{total} {message}`, stream: out as unknown as NodeJS.WritableStream, hideCursor: true, clearOnComplete: false, barsize: 30 },
          Presets.shades_classic,
        );
        bar.start(e.total, e.done, { message: msg });
      } else {
        bar!.setTotal(e.total);
        bar!.update(e.done, { message: msg });
      }
      return;
    }
    const t = now();
    const text = `[${e.stage}] ${e.done}/${e.total}${msg ? ' ' + msg : ''}`;
    const prev = printed.get(e.stage);
    const first = !prev;
    const last = e.done >= e.total;
    if (prev?.last === text) return; // the same state twice says nothing new
    if (first || last || t - prev.at >= interval) {
      printed.set(e.stage, { at: t, last: text });
      out.write(text + '\n');
    }
  };

  const reporter = ((e: RunEvent) => {
    switch (e.type) {
      case 'progress':
        return progress(e);
      case 'started':
        return line(`backend: ${e.backend} (${e.threads} thread${e.threads === 1 ? '' : 's'}), ${e.cells} cell${e.cells === 1 ? '' : 's'}, output in ${e.outDir}`);
      case 'baseline':
        return line(`baseline: ACC ${pct1(e.baseline.acc)} ASR ${pct1(e.baseline.asr)} RA ${pct1(e.baseline.ra)}`);
      case 'row':
        return line(rowLine(e.row));
      case 'gic':
        return line(`GIC on ${e.entry.aux}: max |g(x)-x| ${e.entry.maxPerturbation.toFixed(4)} (bound ${e.entry.delta}), confidence ${e.entry.confidenceBefore.toFixed(3)} -> ${e.entry.confidenceAfter.toFixed(3)}`);
      case 'log':
        return line(e.message);
      case 'embedding':
        return;
      case 'done':
      case 'failed': // the CLI prints the error itself, once, in the one-line form
      case 'cancelled':
        return stopBar();
    }
  }) as ProgressReporter;
  reporter.stop = stopBar;
  return reporter;
}
