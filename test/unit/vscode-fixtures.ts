/** A small results.json shared by the extension's host and webview tests. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Results } from '../../src/shared/results';

const made: string[] = [];

/** A scratch folder, removed when the suite ends. */
export function tmpdir(prefix = 'ba-vscode-'): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  made.push(d);
  return d;
}

after(() => {
  for (const d of made.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

export function sampleResults(over: Partial<Results> = {}): Results {
  return {
    schema: 'backdoor-audit/results@1',
    backend: { name: 'wasm', threads: 1 },
    model: { path: 'victim.pt', format: 'pt', arch: 'small-cnn', params: 1234, inputShape: [28, 28, 1], numClasses: 10 },
    baseline: { acc: 0.97, asr: 0.99, ra: 0.01 },
    rows: [
      { aux: 'unseen', auxType: 'unseen', gic: false, defense: 'ft', acc: 0.95, asr: 0.08, ra: 0.85, der: 0.945, seconds: 3.2, output: 'models/unseen-ft.pt', error: null },
      { aux: 'unseen', auxType: 'unseen', gic: true, defense: 'ft', acc: 0.96, asr: 0.03, ra: 0.9, der: 0.975, seconds: 4.1, output: 'models/unseen-ft-gic.pt', error: null },
      { aux: 'ood-brightness', auxType: 'ood', gic: false, defense: 'ft', seconds: 0.1, output: null, error: 'diverged' },
    ],
    gic: [{ aux: 'unseen', delta: 0.1, norm: 'inf', maxPerturbation: 0.1, meanPerturbation: 0.04, confidenceBefore: 0.6, confidenceAfter: 0.9, bnDistanceBefore: 3, bnDistanceAfter: 1, seconds: 2 }],
    embeddings: [{ aux: 'unseen', method: 'tsne', points: [{ x: 0, y: 1, label: 0, set: 'reference' }, { x: 1, y: 0, label: 1, set: 'aux' }, { x: 2, y: 2, label: 1, set: 'calibrated' }] }],
    detection: {},
    ...over,
  };
}
