/**
 * "Backdoor Audit: Check Environment": runs `backdoor-audit doctor --json` of this extension's own CLI in a
 * separate process (loading tfjs-node-gpu or probing a GPU must not happen in the extension host) and turns its
 * report into the log lines and the one-line summary the command shows. No `vscode` import: tested in plain Node.
 */
import { execFile } from 'node:child_process';
import { formatDoctor, type DoctorReport } from '../engine/backend/doctor';

export function runDoctorProcess(cliPath: string, timeoutMs = 120_000): Promise<DoctorReport> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [cliPath, 'doctor', '--json'],
      // Under VS Code, process.execPath is the editor's Electron binary: this makes it run as plain Node.
      { env: { ...process.env, ELECTRON_RUN_AS_NODE: '1' }, timeout: timeoutMs, maxBuffer: 4 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err) return reject(new Error(`backdoor-audit doctor failed: ${(stderr || err.message).split('\n')[0]}`));
        try {
          const r = JSON.parse(stdout) as DoctorReport;
          if (r.schema !== 'backdoor-audit/doctor@1') throw new Error(`unexpected schema ${String(r.schema)}`);
          resolve(r);
        } catch (e) {
          reject(new Error(`backdoor-audit doctor answered something else than its report: ${(e as Error).message}`));
        }
      },
    );
  });
}

/** The notification: where jobs run now, and the GPU's state. */
export function doctorSummary(r: DoctorReport, device: 'auto' | 'gpu' | 'cpu'): string {
  const p = r.plan[device];
  const now = 'error' in p ? `device "${device}" cannot run: ${p.error}` : `jobs train on ${p.training} and evaluate on ${p.evaluation} (device "${device}")`;
  const gpu = 'error' in r.plan.gpu ? 'no GPU backend' : `GPU backend ${r.plan.gpu.training}`;
  return `Backdoor Audit: ${now}; ${gpu}. Details in the log.`;
}

export { formatDoctor };
