/**
 * The model summary for the inspector, from `backdoor-audit inspect --json` run as a child process: reading
 * a checkpoint can allocate hundreds of megabytes and load the tensor backend, which must not happen on the
 * extension-host thread, and the CLI is the engine's tested front end for exactly this.
 */
import { execFile } from 'node:child_process';
import * as path from 'node:path';
import type { InspectInfo } from './panelProtocol';

export interface InspectResult {
  info?: InspectInfo;
  error?: string;
}

/** The CLI's one-line error without its `error: ` prefix, or a fallback. */
export function errorLine(stderr: string, fallback: string): string {
  const line = stderr
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l.startsWith('error:'));
  return line ? line.slice('error:'.length).trim() : stderr.trim().split('\n')[0] || fallback;
}

export function inspectModel(extensionPath: string, file: string, timeoutMs = 120_000): Promise<InspectResult> {
  const cli = path.join(extensionPath, 'dist', 'cli.js');
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [cli, 'inspect', file, '--json'],
      // Inside VS Code process.execPath is the Electron binary: this makes it behave as plain Node.
      { env: { ...process.env, ELECTRON_RUN_AS_NODE: '1' }, timeout: timeoutMs, maxBuffer: 32 * 1024 * 1024, windowsHide: true },
      (err, stdout, stderr) => {
        if (err) {
          resolve({ error: errorLine(String(stderr), err.killed ? 'reading the model timed out' : err.message) });
          return;
        }
        try {
          const v: unknown = JSON.parse(String(stdout));
          resolve(typeof v === 'object' && v !== null && !Array.isArray(v) ? { info: v as InspectInfo } : { error: 'unexpected output of inspect' });
        } catch {
          resolve({ error: 'unexpected output of inspect' });
        }
      },
    );
  });
}
