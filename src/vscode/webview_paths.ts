/**
 * Paths that come from a webview: a purified model's path relative to its run folder (clicked in the results
 * grid), and the run folder itself when a panel is restored after a reload from the state the page saved.
 * A webview renders data read from untrusted files and keeps its own state, so neither is trusted: a path is
 * used only once its real path (symlinks resolved) is inside the folders the host allows. No `vscode` import:
 * the workspace folders are passed in.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export type Resolved = { ok: true; path: string } | { ok: false; reason: string };

/** The real path of `p` (symlinks resolved), or undefined when it does not exist. */
function real(p: string): string | undefined {
  try {
    return fs.realpathSync.native(p);
  } catch {
    return undefined;
  }
}

function within(root: string, p: string, orEqual: boolean): boolean {
  const r = path.relative(root, p);
  if (r === '') return orEqual;
  return !r.startsWith('..') && !path.isAbsolute(r);
}

/** `p` (real) is inside one of `roots` (real or not) or equal to it. */
function underAny(roots: readonly string[], p: string): boolean {
  return roots.some((root) => {
    const r = real(root);
    return r !== undefined && within(r, p, true);
  });
}

/**
 * A relative path the webview sent, resolved against `base` (a folder the host chose or checked): it must not
 * be absolute or climb with `..`, it must exist, and its real path must be inside `base`'s real path and
 * inside one of `roots`. The reason says which rule refused it, for the message the user sees.
 */
export function resolveWebviewPath(base: string, rel: string, roots: readonly string[]): Resolved {
  if (typeof rel !== 'string' || rel.length === 0 || rel.length > 4096 || rel.includes('\0')) return { ok: false, reason: 'it is not a file path' };
  if (path.isAbsolute(rel) || path.win32.isAbsolute(rel)) return { ok: false, reason: 'it is an absolute path; the panel may only name files inside its run folder' };
  if (rel.split(/[\\/]/).includes('..')) return { ok: false, reason: 'it climbs out of the run folder with ".."' };
  const realBase = real(base);
  if (!realBase) return { ok: false, reason: `the run folder ${base} no longer exists` };
  const realFile = real(path.resolve(realBase, rel));
  if (!realFile) return { ok: false, reason: `it is not in ${base}` };
  if (!within(realBase, realFile, false)) return { ok: false, reason: 'it is a link to a file outside the run folder' };
  if (!underAny(roots, realFile)) return { ok: false, reason: 'it is outside the workspace folders' };
  return { ok: true, path: realFile };
}

/**
 * A folder named by restored webview state (a results panel's run folder): absolute, existing, and inside
 * one of the workspace folders once symlinks are resolved.
 */
export function checkWebviewDir(dir: string, roots: readonly string[]): Resolved {
  if (typeof dir !== 'string' || !path.isAbsolute(dir) || dir.includes('\0')) return { ok: false, reason: 'it is not an absolute folder path' };
  const r = real(dir);
  if (!r) return { ok: false, reason: 'it does not exist' };
  if (!fs.statSync(r).isDirectory()) return { ok: false, reason: 'it is not a folder' };
  if (!underAny(roots, r)) return { ok: false, reason: roots.length ? 'it is outside the workspace folders' : 'no workspace folder is open' };
  return { ok: true, path: r };
}
