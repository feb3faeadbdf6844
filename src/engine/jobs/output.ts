/**
 * Writing a job's outputs without ever leaving a half-written file: everything is produced in a staging
 * directory next to the out dir, then moved in by rename (atomic on one file system), results.json last, so
 * a cancelled or crashed job leaves the previous results intact.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Results } from './results';
import { writeFileAtomic, writeJsonAtomic } from '../util/atomic';
import { renderReportHtml } from '../../../webview-ui/report';

export type { Results };

export interface WriteOptions {
  /** Also write report.html (the panel's view as one self-contained page). */
  html?: boolean;
}

/**
 * Staging folders are named `.backdoor-audit-<pid>-<host>-XXXXXX`, next to the out dir. A job that is killed
 * (SIGKILL, power cut) cannot remove its own: the next job in the same place removes those whose process is
 * gone. Only folders of this host are judged (a pid means nothing on another machine sharing the folder), and
 * a live pid, even one reused by an unrelated process, keeps its folder.
 */
const STAGING = /^\.backdoor-audit-(\d+)-([A-Za-z0-9]+)-[A-Za-z0-9]{6}$/;

export function hostTag(): string {
  return os.hostname().replace(/[^A-Za-z0-9]/g, '').slice(0, 32) || 'localhost';
}

/** True while a process with this pid exists (EPERM: it exists but belongs to another user). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Remove the staging folders that jobs killed on this host left in `parent`; returns their names. */
export function removeStaleStaging(parent: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(parent);
  } catch {
    return [];
  }
  const host = hostTag();
  const removed: string[] = [];
  for (const name of names) {
    const m = STAGING.exec(name);
    if (!m || m[2] !== host) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || processAlive(pid)) continue;
    const dir = path.join(parent, name);
    try {
      // A real folder only: never follow a link planted under that name.
      if (!fs.lstatSync(dir).isDirectory()) continue;
      fs.rmSync(dir, { recursive: true, force: true });
      removed.push(name);
    } catch {
      // gone already, or not ours to remove: leave it
    }
  }
  return removed;
}

/**
 * A fresh staging folder next to `outDir` (same file system, so the final moves are renames), after removing
 * the stale ones of killed jobs. The caller removes it when the job ends, however it ends.
 */
export function makeStaging(outDir: string): { dir: string; removed: string[] } {
  const parent = path.dirname(path.resolve(outDir));
  fs.mkdirSync(parent, { recursive: true });
  const removed = removeStaleStaging(parent);
  const dir = fs.mkdtempSync(path.join(parent, `.backdoor-audit-${process.pid}-${hostTag()}-`));
  return { dir, removed };
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
