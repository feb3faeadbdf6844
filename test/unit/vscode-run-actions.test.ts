/**
 * The Past Runs item actions, through the registered commands with the fake `vscode`: open, reveal, open
 * results.json, re-run (the remembered job, else the default layout's), delete only after a modal "Delete", to
 * the trash, never a folder without results.json or one whose job still runs.
 */
import { fake, Uri } from './vscode-fake';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { activate } from '../../src/extension';
import { RunItem, RunningItem, RunsTree, summarizeRun } from '../../src/vscode/runs_tree';
import { JobRunner } from '../../src/vscode/job_runner';
import { registerCommands } from '../../src/vscode/commands';
import { jobOfRun, RUN_JOBS_KEY } from '../../src/vscode/run_actions';
import { sampleResults } from './vscode-fixtures';

const root = path.join(__dirname, '..', '..');

function fakeContext() {
  const state = new Map<string, unknown>();
  return {
    subscriptions: [] as { dispose(): unknown }[],
    extensionPath: root,
    extensionUri: Uri.file(root),
    workspaceState: { get: <T>(k: string, d?: T) => (state.has(k) ? (state.get(k) as T) : d), update: async (k: string, v: unknown) => void state.set(k, v), keys: () => [...state.keys()] },
  };
}

describe('vscode: Past Runs item actions', () => {
  let ws: string;
  let outDir: string;
  let ctx: ReturnType<typeof fakeContext>;
  let item: RunItem;
  const call = (id: string, ...a: unknown[]) => fake.commands.get(id)!(...a) as Promise<void>;

  beforeEach(() => {
    fake.reset();
    ws = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-runs-'));
    fake.folders = [ws];
    outDir = path.join(ws, 'audit-out', 'run-20260101-120000');
    fs.mkdirSync(outDir, { recursive: true });
    fs.writeFileSync(path.join(outDir, 'results.json'), JSON.stringify(sampleResults()));
    fs.writeFileSync(path.join(ws, 'audit.json'), '{}');
    ctx = fakeContext();
    activate(ctx as never);
    item = new RunItem(summarizeRun(outDir, sampleResults(), Date.now()));
  });
  afterEach(() => {
    for (const d of ctx.subscriptions) d.dispose();
    fs.rmSync(ws, { recursive: true, force: true });
  });

  it('reveals the folder of the clicked item and opens its results panel', async () => {
    await call('backdoorAudit.revealRun', item);
    assert.deepEqual(fake.executed.map((e) => [e.id, (e.args[0] as Uri).fsPath]), [['revealInExplorer', outDir]]);
    await call('backdoorAudit.openRun', item);
    assert.equal(fake.panels.length, 1, 'the results panel of that run');
  });

  it('re-run finds the job: remembered, else by the default layout; unknown layouts give none', () => {
    const state = ctx.workspaceState as never;
    assert.equal(jobOfRun(state, outDir), path.join(ws, 'audit.json'));
    const named = path.join(ws, 'audit-out', 'study-20260101-120000');
    fs.writeFileSync(path.join(ws, 'study.audit.json'), '{}');
    assert.equal(jobOfRun(state, named), path.join(ws, 'study.audit.json'));
    assert.equal(jobOfRun(state, path.join(ws, 'elsewhere')), undefined);
    const other = path.join(ws, 'jobs', 'x.json');
    fs.mkdirSync(path.dirname(other));
    fs.writeFileSync(other, '{}');
    void ctx.workspaceState.update(RUN_JOBS_KEY, { [path.join(ws, 'elsewhere')]: other });
    assert.equal(jobOfRun(state, path.join(ws, 'elsewhere')), other);
  });

  it('delete asks first (modal), deletes to the trash on "Delete", and refuses what is not a run', async () => {
    await call('backdoorAudit.deleteRun', item);
    assert.ok(fs.existsSync(outDir), 'dismissed: nothing deleted');
    const asked = fake.messages.at(-1)!;
    assert.match(asked.text, /^Delete the run folder run-20260101-120000 with its results and purified models\?$/);
    fake.answers.push('Delete');
    await call('backdoorAudit.deleteRun', item);
    assert.ok(!fs.existsSync(outDir));
    assert.deepEqual(fake.deleted, [{ path: outDir, useTrash: true }]);
    // A stale item (its folder gone, or a folder without results.json) deletes nothing, whatever the answer.
    fs.mkdirSync(outDir);
    fs.writeFileSync(path.join(outDir, 'model.pt'), 'x');
    fake.answers.push('Delete');
    await call('backdoorAudit.deleteRun', item);
    assert.ok(fs.existsSync(path.join(outDir, 'model.pt')));
    assert.match(fake.messages.at(-1)!.text, /holds no results\.json; nothing was deleted/);
  });

  it('lists a running job first with its cells, and its inline Cancel reaches the job', async () => {
    const handlers: Record<string, Array<(...a: unknown[]) => void>> = { message: [], error: [], exit: [] };
    const sent: unknown[] = [];
    const worker = {
      pid: 0,
      postMessage: (m: unknown) => void sent.push(m),
      on: (ev: string, cb: (...a: unknown[]) => void) => void handlers[ev].push(cb),
      terminate: () => Promise.resolve(),
    };
    const emit = (m: unknown) => handlers.message.forEach((h) => h(m));
    const runner = new JobRunner({ appendLine: () => undefined } as never, () => worker as never);
    const tree = new RunsTree(runner);
    const job = path.join(ws, 'audit.json');
    fs.writeFileSync(job, JSON.stringify({ model: 'victim.pt' }));
    const running = path.join(ws, 'audit-out', 'run-20260101-130000');
    const done = runner.run({ jobPath: job, outDir: running, title: 'victim.pt — run-20260101-130000' });
    await new Promise((r) => setImmediate(r));
    emit({ type: 'started', jobPath: job, outDir: running, cells: 4, backend: 'wasm', threads: 1 });
    emit({ type: 'row', row: sampleResults().rows[0] });
    const items = await tree.getChildren();
    assert.ok(items[0] instanceof RunningItem);
    assert.equal(items[0].description, 'running · 1/4 cells');
    assert.equal(items[0].contextValue, 'backdoorAudit.runningJob');
    assert.ok(items.slice(1).every((i) => i instanceof RunItem));
    // The inline button runs the command with the item: registered here over this runner.
    fake.commands.clear();
    registerCommands({ subscriptions: [], extensionPath: root } as never, { runner, panels: {} as never, runs: tree, log: { appendLine: () => undefined } as never, state: ctx.workspaceState as never });
    await fake.commands.get('backdoorAudit.cancelJob')!(items[0]);
    assert.deepEqual(sent.at(-1), { type: 'cancel' });
    emit({ type: 'cancelled' });
    assert.equal((await done).status, 'cancelled');
    assert.ok(!((await tree.getChildren())[0] instanceof RunningItem), 'gone once it ended');
    tree.dispose();
    runner.dispose();
  });
});
