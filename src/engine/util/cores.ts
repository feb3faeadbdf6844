import * as os from 'node:os';

/** The CPU cores this process may use (Node's availableParallelism where it has it, else the CPU count). */
export function cpuCores(): number {
  return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
}
