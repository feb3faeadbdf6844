/**
 * The model summary for the inspector, from `backdoor-audit inspect --json` run as a child process: reading
 * a checkpoint can allocate hundreds of megabytes and load the tensor backend, which must not happen on the
 * extension-host thread, and the CLI is the engine's tested front end for exactly this.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { InspectInfo } from '../shared/panel_messages';

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

/** What a model file's first bytes say it is: the magic numbers only, nothing parsed. */
function formatFromMagic(file: string, head: Buffer): string {
  const ext = path.extname(file).toLowerCase();
  if (head.length >= 4 && head.readUInt32LE(0) === 0x04034b50) return 'zip archive (PyTorch checkpoint)';
  if (head.length >= 2 && head[0] === 0x80 && head[1] <= 5) return 'pickle (legacy PyTorch checkpoint)';
  if (head.length >= 9 && head[8] === 0x7b && head.readBigUInt64LE(0) < 100_000_000n) return 'safetensors';
  if (head.length >= 1 && head[0] === 0x7b) return 'JSON (TensorFlow.js model.json)';
  if (ext === '.onnx' && head.length >= 1 && head[0] === 0x08) return 'protobuf (ONNX)';
  return 'unknown';
}

/**
 * The summary of a model in an untrusted workspace: its size and what its first 16 bytes say it is. Nothing
 * else of the file is read, nothing is parsed or run, and no process is started for it.
 */
export function headerSummary(file: string): InspectResult {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    const head = Buffer.alloc(16);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    return {
      info: {
        format: formatFromMagic(file, head.subarray(0, n)),
        bytes: fs.fstatSync(fd).size,
        note: 'The workspace is not trusted: only the file header was read. Trust the workspace to inspect the model and run jobs on it.',
      },
    };
  } catch (e) {
    return { error: `cannot read the file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})` };
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
