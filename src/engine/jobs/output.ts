/**
 * Writing a job's outputs without ever leaving a half-written file: everything is produced in a staging
 * directory next to the out dir, then moved in by rename (atomic on one file system), results.json last, so
 * a cancelled or crashed job leaves the previous results intact.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Results } from './results';
import { writeFileAtomic, writeJsonAtomic } from '../util/atomic';
import { renderReportHtml } from '../../../webview-ui/report';

export type { Results };

export interface WriteOptions {
  /** Also write report.html (the panel's view as one self-contained page). */
  html?: boolean;
}

/** Move staged files into outDir, write results.json (and report.html) atomically; returns results.json's path. */
export function writeResults(staging: string, outDir: string, results: Results, o: WriteOptions = {}): string {
  fs.mkdirSync(outDir, { recursive: true });
  for (const f of fs.readdirSync(staging)) {
    fs.renameSync(path.join(staging, f), path.join(outDir, f));
  }
  if (o.html) {
    const page = reportHtml(results);
    if (page) writeFileAtomic(path.join(outDir, 'report.html'), page);
  }
  const file = path.join(outDir, 'results.json');
  writeJsonAtomic(file, results);
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
