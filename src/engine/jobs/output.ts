/**
 * Writing a job's outputs without ever leaving a half-written file: everything is produced in a staging
 * directory next to the out dir, then moved in by rename (atomic on one file system), results.json last, so
 * a cancelled or crashed job leaves the previous results intact.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Results } from './results';

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
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { renderReportHtml } = require('../../../webview-ui/report') as { renderReportHtml?: (r: Results) => string };
      if (renderReportHtml) writeAtomic(path.join(outDir, 'report.html'), renderReportHtml(results));
    } catch {
      // The report needs the panel bundle; without it the JSON is still complete.
    }
  }
  const file = path.join(outDir, 'results.json');
  writeAtomic(file, JSON.stringify(results, null, 2) + '\n');
  return file;
}

export function writeAtomic(file: string, data: string | Uint8Array): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}
