/**
 * Levelled lines in the Backdoor Audit output channel. The channel is a LogOutputChannel (created with
 * `{ log: true }`): `info`, `warn` and `error` lines carry their level and time, and the user can filter by
 * level (Output view, "Set Log Level"). A plain OutputChannel (older hosts, tests) gets the level as a prefix.
 */
import type * as vscode from 'vscode';

export type LogLevel = 'info' | 'warn' | 'error';

export type Channel = Pick<vscode.OutputChannel, 'appendLine'> & Partial<Pick<vscode.LogOutputChannel, LogLevel>>;

export function logLine(ch: Channel, level: LogLevel, text: string): void {
  const f = ch[level];
  if (typeof f === 'function') f.call(ch, text);
  else ch.appendLine(level === 'info' ? text : `[${level}] ${text}`);
}

/** The level of a job's own log message: the engine writes warnings as `warning: ...`. */
export function levelOfJobMessage(message: string): LogLevel {
  return /^warning\b/i.test(message) ? 'warn' : /^error\b/i.test(message) ? 'error' : 'info';
}
