/**
 * Writing a job's outputs without ever leaving a half-written file: everything is produced in a staging
 * directory next to the out dir, then moved in by rename (atomic on one file system), results.json last, so
 * a cancelled or crashed job leaves the previous results intact.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Results } from '../../shared/results';
import { ClobberError, sameFile, writeFileAtomic, writeJsonAtomic } from '../util/atomic';
import { renderReportHtml } from '../../shared/report_page';

export type { Results };
export { hostTag, makeStaging, processAlive, removeStaleStaging } from './staging';

export interface WriteOptions {
  /** Also write report.html (the panel's view as one self-contained page). */
  html?: boolean;
  /** The job's input files: never replaced by an output (ClobberError instead), links and hard links included. */
  protect?: string[];
}

/** Move staged files into outDir, write results.json (and report.html) atomically; returns results.json's path. */
export function writeResults(staging: string, outDir: string, results: Results, o: WriteOptions = {}): string {
  fs.mkdirSync(outDir, { recursive: true });
  const staged = fs.readdirSync(staging);
  const file = path.join(outDir, 'results.json');
  // Checked before anything moves: a refused job leaves the out dir as it was.
  const protect = o.protect ?? [];
  for (const f of [...staged.map((x) => path.join(outDir, x)), file, ...(o.html ? [path.join(outDir, 'report.html')] : [])]) {
    if (protect.some((p) => path.resolve(p) === path.resolve(f) || sameFile(p, f))) throw new ClobberError(f);
  }
  for (const f of staged) {
    fs.renameSync(path.join(staging, f), path.join(outDir, f));
  }
  if (o.html) {
    const page = reportHtml(results);
    if (page) writeFileAtomic(path.join(outDir, 'report.html'), page, { protect });
  }
  writeJsonAtomic(file, results, { protect });
  return file;
}


/** First existing file among candidates (next to the bundle in dist/, or in the source tree). */
function firstExisting(candidates: string[]): string | undefined {
  return candidates.find((c) => fs.existsSync(c));
}

/** report.html: the panel's bundle and stylesheet inlined with the results; undefined if the bundle is missing. */
function reportHtml(results: Results): string | undefined {
  const script = firstExisting([path.join(__dirname, 'webview.js'), path.join(__dirname, '..', '..', '..', 'dist', 'webview.js')]);
  const css = firstExisting([path.join(__dirname, '..', 'media', 'panel.css'), path.join(__dirname, '..', '..', '..', 'media', 'panel.css')]);
  if (!script || !css) return undefined;
  return renderReportHtml({ results: results as never, script: fs.readFileSync(script, 'utf8'), css: fs.readFileSync(css, 'utf8') });
}
