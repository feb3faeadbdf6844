/**
 * A child process's environment as the kernel holds it (/proc/<pid>/environ, Linux): the tests that check what
 * the processes we start are given (heap_env.ts) read it from outside.
 */
import * as fs from 'node:fs';

/** Whether this system exposes process environments (/proc, Linux). */
export const procEnvironReadable = (): boolean => fs.existsSync('/proc/self/environ');

/** `NAME=value` of process `pid`'s variable `name`, or 'unset'. */
export function procEnvVar(pid: number, name: string): string {
  const vars = fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
  return vars.find((v) => v.startsWith(`${name}=`)) ?? 'unset';
}
