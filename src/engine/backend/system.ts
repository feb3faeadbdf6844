/**
 * What the machine itself says about its GPU, shared by `backdoor-audit doctor` and the backend loader: the
 * NVIDIA driver (nvidia-smi) and where the dynamic loader finds a shared library (ldconfig's cache, then
 * LD_LIBRARY_PATH).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export function firstLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split('\n')[0].trim();
}

/** nvidia-smi's CSV answer (`name, driver_version` per GPU), or why it could not run. */
export function nvidiaSmi(): { stdout: string } | { error: string } {
  try {
    return { stdout: execFileSync('nvidia-smi', ['--query-gpu=name,driver_version', '--format=csv,noheader'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 15_000 }) };
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    return { error: err.code === 'ENOENT' ? 'nvidia-smi not found' : `nvidia-smi failed: ${firstLine(err.stderr || err.message)}` };
  }
}

export type NvidiaInfo = { driver: string; gpus: string[] } | { driver: null; reason: string };

export function parseNvidiaSmi(smi: { stdout: string } | { error: string }): NvidiaInfo {
  if (!('stdout' in smi)) return { driver: null, reason: smi.error };
  const rows = smi.stdout.split('\n').map((l) => l.split(',').map((c) => c.trim())).filter((r) => r.length >= 2 && r[0]);
  return rows.length ? { driver: rows[0][1], gpus: rows.map((r) => r[0]) } : { driver: null, reason: 'nvidia-smi lists no GPU' };
}

function ldconfigCache(): string | null {
  if (process.platform !== 'linux') return null;
  for (const bin of ['/sbin/ldconfig', '/usr/sbin/ldconfig', 'ldconfig']) {
    try {
      return execFileSync(bin, ['-p'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 });
    } catch {
      // try the next place
    }
  }
  return '';
}

/** Where the dynamic loader finds a library (Linux), undefined when it does not; null: not a Linux machine. */
export function libraryFinder(): (name: string) => string | undefined | null {
  let cache: string | null | undefined;
  return (name) => {
    if (cache === undefined) cache = ldconfigCache();
    if (cache === null) return null;
    const line = cache.split('\n').find((l) => l.trim().startsWith(`${name} `));
    const m = line ? /=>\s*(\S+)/.exec(line) : null;
    const extra = (process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean).map((d) => path.join(d, name)).find((f) => fs.existsSync(f));
    return m?.[1] ?? extra;
  };
}
