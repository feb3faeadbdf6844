/**
 * Progress on stderr: a bar per stage on a terminal (cli-progress), plain lines otherwise (at most one per
 * stage every two seconds, plus the first and last of each stage, so logs of long jobs stay readable).
 */
import { SingleBar, Presets } from 'cli-progress';
import type { RunEvent } from '../protocol';

export function createProgressReporter(out: NodeJS.WriteStream): (e: RunEvent) => void {
  const tty = Boolean(out.isTTY);
  let bar: SingleBar | undefined;
  let stage = '';
  let lastPrint = 0;
  const stopBar = () => {
    bar?.stop();
    bar = undefined;
  };
  return (e) => {
    if (e.type === 'progress') {
      if (e.stage !== stage) {
        stopBar();
        stage = e.stage;
        lastPrint = 0;
        if (tty) {
          bar = new SingleBar({ format: `${e.stage.padEnd(32).slice(0, 32)} [{bar}] {value}/{total} {message}`, stream: out, hideCursor: true }, Presets.shades_classic);
          bar.start(e.total, e.done, { message: e.message ?? '' });
        }
      }
      if (bar) {
        bar.setTotal(e.total);
        bar.update(e.done, { message: e.message ?? '' });
      } else {
        const now = Date.now();
        if (now - lastPrint > 2000 || e.done === e.total || lastPrint === 0) {
          lastPrint = now;
          out.write(`[${e.stage}] ${e.done}/${e.total}${e.message ? ' ' + e.message : ''}\n`);
        }
      }
    } else if (e.type === 'row') {
      stopBar();
      const r = e.row;
      out.write(r.error ? `${r.defense} on ${r.aux}${r.gic ? ' + GIC' : ''}: error: ${r.error}\n` : `${r.defense} on ${r.aux}${r.gic ? ' + GIC' : ''}: ACC ${(100 * r.acc!).toFixed(1)}% ASR ${(100 * r.asr!).toFixed(1)}% (${r.seconds.toFixed(1)} s)\n`);
    } else if (e.type === 'baseline') {
      stopBar();
      out.write(`baseline: ACC ${(100 * e.baseline.acc).toFixed(1)}% ASR ${(100 * e.baseline.asr).toFixed(1)}%\n`);
    } else if (e.type === 'started') {
      out.write(`backend: ${e.backend} (${e.threads} thread${e.threads === 1 ? '' : 's'})\n`);
    } else if (e.type === 'log') {
      stopBar();
      out.write(e.message + '\n');
    } else if (e.type === 'done' || e.type === 'failed' || e.type === 'cancelled') {
      stopBar();
    }
  };
}
