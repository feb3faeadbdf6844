/**
 * The staging folder of a job: where its outputs are produced before they are moved into the out dir (see
 * output.ts), and the removal of the folders killed jobs left behind.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { threadId } from 'node:worker_threads';

/**
 * Staging folders are named `.backdoor-audit-<pid>-t<thread>-<host>-XXXXXX`, next to the out dir. A job that is
 * killed (SIGKILL, power cut) cannot remove its own: the next job in the same place removes those whose process
 * is gone. Only folders of this host are judged (a pid means nothing on another machine sharing the folder), and
 * a live pid, even one reused by an unrelated process, keeps its folder. The extension host removes the folder
 * of a job process it stopped as soon as that process has exited, by its pid (removeProcessStaging).
 */
const STAGING = /^\.backdoor-audit-(\d+)-(?:t(\d+)-)?([A-Za-z0-9]+)-[A-Za-z0-9]{6}$/;

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
  return removeStaging(parent, (pid) => pid !== process.pid && !processAlive(pid));
}

/**
 * Remove the staging folders in `parent` of one child process that has exited (killed or crashed: its own
 * cleanup did not run). Returns their names.
 */
export function removeProcessStaging(parent: string, childPid: number): string[] {
  return removeStaging(parent, (pid) => pid === childPid && pid !== process.pid && !processAlive(pid));
}

function removeStaging(parent: string, stale: (pid: number, thread: number | undefined) => boolean): string[] {
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
    if (!m || m[3] !== host) continue;
    if (!stale(Number(m[1]), m[2] === undefined ? undefined : Number(m[2]))) continue;
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
  const dir = fs.mkdtempSync(path.join(parent, `.backdoor-audit-${process.pid}-t${threadId}-${hostTag()}-`));
  return { dir, removed };
}
