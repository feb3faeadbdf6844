/**
 * "Backdoor Audit: Run Demo": a first run for a user without a backdoored model. The extension ships the
 * demo's BadNets victim (a small CNN on the embedded MNIST digits, target 0; `examples/mnist-badnets`, copied to
 * dist/demo/ by the build) and runs a job over it like any other: `ft` and `clp` on four auxiliary sets (seen,
 * held-out, darkened, synthetic) with and without GIC, on the embedded digits, so nothing is downloaded. The
 * job goes through the ordinary runner (job process, progress, results panel, Past Runs).
 *
 * The files go to `backdoor-audit-demo/` in the first workspace folder, or to a fresh temporary folder when no
 * folder is open. An existing demo folder is reused; a victim or audit.json found there is left as it is (the
 * user may have edited the job to try something), so nothing of theirs is overwritten.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const DEMO_FOLDER = 'backdoor-audit-demo';

/** The demo job: the same as examples/mnist-badnets/audit.json (a quick run on 2 CPU cores). */
export function demoJob(): Record<string, unknown> {
  return {
    model: 'victim.safetensors',
    data: { train: { format: 'mnist-embedded' }, test: { format: 'mnist-embedded' } },
    attack: { type: 'badnets', target: 0, size: 3, offset: 0 },
    aux: [
      { name: 'seen', type: 'seen', perClass: 20 },
      { name: 'heldout', type: 'unseen', source: { format: 'mnist-embedded' }, perClass: 20 },
      { name: 'dark', type: 'ood', source: { format: 'mnist-embedded' }, shift: 'brightness', perClass: 20 },
      { name: 'inverted', type: 'synthetic', perClass: 10 },
    ],
    defenses: ['ft', 'clp'],
    gic: { mode: 'both', delta: 0.1, norm: 'inf' },
    profile: 'fast',
    embedding: { method: 'tsne', points: 300 },
    seed: 0,
    device: 'auto',
  };
}

export interface DemoFiles {
  folder: string;
  jobPath: string;
  /** Files this call wrote (an existing victim or job is kept). */
  written: string[];
}

/** Write a file through a temporary name and a rename, so that a cancelled write leaves nothing half-written. */
function writeNew(file: string, data: string | Uint8Array): boolean {
  if (fs.existsSync(file)) return false;
  const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
  return true;
}

/**
 * Lay out the demo in `workspaceFolder/backdoor-audit-demo` (or a new temporary folder): the shipped victim and
 * the job. Throws when the shipped victim is missing (a broken installation), naming the file.
 */
export function prepareDemo(extensionPath: string, workspaceFolder: string | undefined): DemoFiles {
  const victim = path.join(extensionPath, 'dist', 'demo', 'victim.safetensors');
  if (!fs.existsSync(victim)) throw new Error(`the demo victim is missing from the extension (${victim}); reinstall the extension or run \`npm run build\``);
  const folder = workspaceFolder ? path.join(workspaceFolder, DEMO_FOLDER) : fs.mkdtempSync(path.join(os.tmpdir(), `${DEMO_FOLDER}-`));
  fs.mkdirSync(folder, { recursive: true });
  const written: string[] = [];
  const modelFile = path.join(folder, 'victim.safetensors');
  if (writeNew(modelFile, fs.readFileSync(victim))) written.push(modelFile);
  const jobPath = path.join(folder, 'audit.json');
  if (writeNew(jobPath, JSON.stringify(demoJob(), null, 2) + '\n')) written.push(jobPath);
  return { folder, jobPath, written };
}
