/** Worker-thread entry of the fuzz test: runs runFuzz and reports each step to the watchdog in the test. */
import { parentPort, workerData } from 'node:worker_threads';
import { runFuzz, type FuzzOptions } from './run';

const port = parentPort!;
const o = workerData as Omit<FuzzOptions, 'onStart'>;
const result = runFuzz({ ...o, onStart: (label) => port.postMessage({ type: 'start', label }) });
port.postMessage({ type: 'done', ...result });
