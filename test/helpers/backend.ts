/** Test set-up: the wasm backend (the CPU path users get), once per process. */
import { initBackend } from '../../src/engine/backend';

export async function useWasm(): Promise<void> {
  const info = await initBackend('cpu');
  if (info.name !== 'wasm') throw new Error(`expected the wasm backend, got ${info.name}`);
}
