/**
 * The job runner: validated audit.json -> plan (aux sets x GIC x defenses) -> cells -> results.json.
 * Used by the CLI and by the extension's worker; emits RunEvents; cancellable through an AbortSignal.
 */
import type { RunEvent } from '../../protocol';
import type { Results } from './results';

export interface RunOptions {
  /** Directory for results.json and purified models (created if missing). */
  outDir: string;
  /** Overrides the job's `device`. */
  device?: 'auto' | 'gpu' | 'cpu';
  /** Cancels between batches; the job then leaves no partial outputs. */
  signal?: AbortSignal;
  onEvent?: (e: RunEvent) => void;
  /** Allow replacing purified models an earlier run wrote to the same outDir. */
  overwrite?: boolean;
}

export async function runJobFile(jobPath: string, opts: RunOptions): Promise<Results> {
  void jobPath;
  void opts;
  throw new Error('runJobFile: not implemented yet');
}
