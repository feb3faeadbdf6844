/**
 * Zip archives from untrusted files (PyTorch checkpoints, numpy .npz), through fflate. Sizes in zip headers
 * are the writer's claims: fflate allocates the declared uncompressed size of a deflated entry before it
 * inflates, and walks as many directory entries as the end record says. Every claim is checked against what
 * the file can actually hold before fflate sees it.
 */
import { unzipSync } from 'fflate';
import { InputError } from '../errors';

/** Deflate cannot expand more than ~1032:1; a larger claim in a zip header is a lie (or a bomb). */
export const MAX_DEFLATE_RATIO = 1032;

export interface UnzipLimits {
  /** Largest uncompressed entry accepted. */
  maxEntry: number;
  /** Largest sum of the uncompressed entries taken. */
  maxTotal?: number;
  /** What the archive is, in "corrupt <what>" errors (default "zip archive"). */
  what?: string;
  /** Appended to "corrupt" errors: what the user can do about it. */
  hint?: string;
}

/**
 * Decompress the entries `want` selects, each declared size bounded by the file (stored entries: exactly
 * their compressed size; deflated ones: at most MAX_DEFLATE_RATIO times it) and by `limits`, and each
 * result checked to have the size its header declared.
 */
export function unzipChecked(buf: Uint8Array, where: string, want: (name: string) => boolean, limits: UnzipLimits): Record<string, Uint8Array> {
  const { maxEntry, maxTotal = Infinity, what = 'zip archive' } = limits;
  const tail = limits.hint ? `: ${limits.hint}` : '';
  checkDirectorySize(buf, where, what, tail);
  const declared = new Map<string, { size: number; originalSize: number; compression: number }>();
  let total = 0;
  let out: Record<string, Uint8Array>;
  try {
    out = unzipSync(buf, {
      filter: (f) => {
        if (!want(f.name)) return false;
        if (declared.has(f.name)) throw new InputError(`archive has two records named ${f.name}`, where);
        if (f.compression !== 0 && f.compression !== 8) throw new InputError(`archive record ${f.name} uses unsupported compression ${f.compression}`, where);
        if (!Number.isSafeInteger(f.size) || !Number.isSafeInteger(f.originalSize) || f.size < 0 || f.originalSize < 0 || f.size > buf.length) {
          throw new InputError(`archive record ${f.name} claims ${f.size} bytes, more than the file holds (${buf.length})`, where);
        }
        if (f.compression === 0 && f.originalSize !== f.size) throw new InputError(`archive record ${f.name} has inconsistent sizes`, where);
        if (f.compression === 8 && f.originalSize > f.size * MAX_DEFLATE_RATIO + 1024) {
          throw new InputError(`archive record ${f.name} claims to expand ${f.size} bytes to ${f.originalSize}`, where);
        }
        if (f.originalSize > maxEntry) throw new InputError(`archive record ${f.name} is too large (${f.originalSize} bytes)`, where);
        total += f.originalSize;
        if (total > maxTotal) throw new InputError(`the archive's records inflate to more than ${maxTotal} bytes`, where);
        declared.set(f.name, f);
        return true;
      },
    });
  } catch (e) {
    if (e instanceof InputError) throw e;
    throw new InputError(`corrupt ${what} (${e instanceof Error ? e.message : String(e)})${tail}`, where);
  }
  for (const [name, f] of declared) {
    // fflate clamps reads at the end of the buffer; a short record means a truncated or lying file.
    if (!out[name] || out[name].length !== f.originalSize) throw new InputError(`archive record ${name} is truncated`, where);
  }
  return out;
}

/**
 * fflate walks as many central-directory entries as the end record claims (up to 2^32 with zip64) without
 * checking them against the file; a 100-byte file could keep it busy for minutes. Each entry takes at least
 * 46 bytes, so a count the file cannot hold is refused first. Mirrors fflate's own end-record lookup.
 */
function checkDirectorySize(buf: Uint8Array, where: string, what: string, tail: string): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let e = buf.length - 22;
  while (e >= 0 && buf.length - e <= 65557 && dv.getUint32(e, true) !== 0x06054b50) e--;
  if (e < 0 || buf.length - e > 65557) throw new InputError(`corrupt ${what} (no end of central directory)${tail}`, where);
  let count = dv.getUint16(e + 10, true);
  if (e >= 20 && dv.getUint32(e - 20, true) === 0x07064b50) {
    const ze = dv.getUint32(e - 12, true);
    if (ze + 56 <= buf.length && dv.getUint32(ze, true) === 0x06064b50) count = dv.getUint32(ze + 32, true);
  }
  if (count * 46 > buf.length) throw new InputError(`corrupt ${what} (directory claims ${count} entries)`, where);
}
