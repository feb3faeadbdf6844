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

/** The variables heap_env.ts gives the processes we start. */
const HEAP_VARS: Array<[string, string]> = [
  ['MALLOC_MMAP_THRESHOLD_', '2000000000'],
  ['GLIBC_TUNABLES', 'glibc.malloc.hugetlb=1'],
];

/** Those variables as process `pid` holds them, `NAME=value` each, space-separated. */
export function procHeapVars(pid: number): string {
  return HEAP_VARS.map(([name]) => procEnvVar(pid, name)).join(' ');
}

/** What a process we start must hold: heap_env.ts's values, or those this process was given (they win). */
export function expectedHeapVars(): string {
  return HEAP_VARS.map(([name, value]) => `${name}=${process.env[name] ?? value}`).join(' ');
}
