/** The extension's settings (`backdoorAudit.*`), read at the moment they are used so that changes apply at once. */
import * as vscode from 'vscode';

export interface Settings {
  device: 'auto' | 'gpu' | 'cpu';
  profile: 'fast' | 'paper';
  gicDelta: number;
  gicNorm: 'inf' | '2';
  outputFolder: string;
  /** Size limits of a job's model and data files (MB, 0 = no limit). */
  limits: { maxModelMB: number; maxDataMB: number };
  /** Heap limit of a job process (MB, 0 = Node's default). */
  jobMaxMemoryMB: number;
}

/** A size setting: a number >= 0 (0 = no limit), else the default. */
function megabytes(v: unknown, fallback: number): number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : fallback;
}

export function settings(scope?: vscode.Uri): Settings {
  const c = vscode.workspace.getConfiguration('backdoorAudit', scope);
  const device = c.get<string>('device', 'auto');
  const profile = c.get<string>('profile', 'fast');
  const norm = c.get<string>('gic.norm', 'inf');
  const delta = c.get<number>('gic.delta', 0.1);
  return {
    device: device === 'gpu' || device === 'cpu' ? device : 'auto',
    profile: profile === 'paper' ? 'paper' : 'fast',
    gicDelta: typeof delta === 'number' && delta > 0 ? delta : 0.1,
    gicNorm: norm === '2' ? '2' : 'inf',
    outputFolder: c.get<string>('outputFolder', '') ?? '',
    limits: { maxModelMB: megabytes(c.get<number>('limits.maxModelMB'), 2048), maxDataMB: megabytes(c.get<number>('limits.maxDataMB'), 4096) },
    jobMaxMemoryMB: megabytes(c.get<number>('jobProcess.maxMemoryMB'), 0),
  };
}
