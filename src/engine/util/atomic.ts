/**
 * Writing outputs so that a crash, a cancel or a full disk never leaves a half-written file and never
 * damages an input (DESIGN.md, "Jobs are data"): data goes to a temporary file in the destination's own
 * folder (rename is only atomic within one file system), is flushed with fsync, then renamed over the
 * destination. Readers see the old file or the new one, nothing in between.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';

/** What can be written: bytes, text, or chunks (large models are streamed out without one big buffer). */
export type AtomicData = string | Uint8Array | Iterable<string | Uint8Array>;

export interface AtomicOptions {
  /** Files that must never be replaced (the job's inputs); compared by identity, so links count too. */
  protect?: Iterable<string>;
  /** Permissions of a new file (default 0o644 before umask). */
  mode?: number;
}

/** Raised instead of replacing a protected (input) file. */
export class ClobberError extends Error {
  constructor(readonly file: string) {
    super(`refusing to overwrite an input file: ${file}`);
    this.name = 'ClobberError';
  }
}

/** True when both paths name the same existing file (same device and inode: symlinks, hard links, case). */
export function sameFile(a: string, b: string): boolean {
  try {
    const sa = fs.statSync(a);
    const sb = fs.statSync(b);
    return sa.dev === sb.dev && sa.ino === sb.ino;
  } catch {
    return false;
  }
}

function assertNotProtected(file: string, protect: Iterable<string> | undefined): void {
  if (!protect) return;
  for (const p of protect) if (path.resolve(p) === path.resolve(file) || sameFile(p, file)) throw new ClobberError(file);
}

function* chunks(data: AtomicData): Iterable<Uint8Array> {
  if (typeof data === 'string') yield Buffer.from(data);
  else if (data instanceof Uint8Array) yield data;
  else for (const c of data) yield typeof c === 'string' ? Buffer.from(c) : c;
}

/** Temp name next to the target; dot-prefixed so file watchers and globbing users ignore it. */
function tempNameFor(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
}

/**
 * Replace `file` with `data` atomically. On any failure (including one thrown by a chunk iterator midway)
 * the temporary file is removed and `file` keeps its previous content.
 */
export function writeFileAtomic(file: string, data: AtomicData, opts: AtomicOptions = {}): void {
  const target = path.resolve(file);
  assertNotProtected(target, opts.protect);
  const tmp = tempNameFor(target);
  // 'wx': never follow or reuse something already at the temp name.
  const fd = fs.openSync(tmp, 'wx', opts.mode ?? 0o644);
  let ok = false;
  try {
    for (const c of chunks(data)) {
      let off = 0;
      while (off < c.length) off += fs.writeSync(fd, c, off, c.length - off);
    }
    // Without fsync the rename can reach the disk before the data: after a power cut the destination
    // would exist but be empty.
    fs.fsyncSync(fd);
    ok = true;
  } finally {
    fs.closeSync(fd);
    if (!ok) fs.rmSync(tmp, { force: true });
  }
  try {
    fs.renameSync(tmp, target);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  syncDir(path.dirname(target));
}

/** `JSON.stringify(value, null, 2)` plus a final newline, written atomically. */
export function writeJsonAtomic(file: string, value: unknown, opts: AtomicOptions = {}): void {
  writeFileAtomic(file, JSON.stringify(value, null, 2) + '\n', opts);
}

/** Make the rename itself durable. Not possible on every platform (Windows cannot open folders): best effort. */
function syncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // the data is safe already; only the directory entry's durability is not guaranteed here
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

export interface UniqueOptions {
  /** Never return one of these files, even with overwrite (the job's inputs). */
  inputs?: Iterable<string>;
  /**
   * Create an empty placeholder with O_EXCL so that another writer (another job in the same folder) cannot
   * take the same name before the real file is written over it; default true. The caller removes the
   * placeholder if it ends up writing nothing.
   */
  reserve?: boolean;
}

/**
 * An output path `dir/base.ext` that does not replace anything: if the name is taken (or is an input file),
 * `base-1.ext`, `base-2.ext`, ... With `overwrite`, an existing output is reused, but an input never is.
 * `ext` may be given with or without its dot; `base` must be a plain file name.
 */
export function uniqueOutputPath(dir: string, base: string, ext: string, overwrite = false, opts: UniqueOptions = {}): string {
  if (!base || base === '.' || base === '..' || /[/\\]/.test(base)) throw new Error(`not a plain file name: "${base}"`);
  const suffix = ext === '' ? '' : ext.startsWith('.') ? ext : `.${ext}`;
  const inputs = [...(opts.inputs ?? [])];
  const reserve = opts.reserve ?? true;
  fs.mkdirSync(dir, { recursive: true });
  for (let i = 0; i < 100_000; i++) {
    const candidate = path.resolve(dir, i === 0 ? `${base}${suffix}` : `${base}-${i}${suffix}`);
    if (inputs.some((p) => path.resolve(p) === candidate || sameFile(p, candidate))) continue;
    if (fs.existsSync(candidate)) {
      if (overwrite && fs.statSync(candidate).isFile()) return candidate;
      continue;
    }
    if (!reserve) return candidate;
    try {
      fs.closeSync(fs.openSync(candidate, 'wx'));
      return candidate;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue; // lost a race: try the next name
      throw e;
    }
  }
  throw new Error(`no free output name for ${base}${suffix} in ${dir}`);
}
