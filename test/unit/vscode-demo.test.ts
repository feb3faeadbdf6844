/**
 * First run: "Backdoor Audit: Run Demo" lays out the shipped demo victim and a valid job in the workspace (or a
 * temporary folder), never overwrites what a user changed there, and the walkthrough names real commands and
 * ships its pages in the .vsix.
 */
import { fake } from './vscode-fake';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DEMO_FOLDER, demoJob, prepareDemo } from '../../src/vscode/demo';
import { validateJobObject } from '../../src/engine/jobs/validate';

const ROOT = path.join(__dirname, '..', '..');
const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));

describe('vscode: Run Demo and the walkthrough', () => {
  let dir: string;
  let ext: string;
  beforeEach(() => {
    fake.reset();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-demo-'));
    ext = path.join(dir, 'ext');
    fs.mkdirSync(path.join(ext, 'dist', 'demo'), { recursive: true });
    fs.copyFileSync(path.join(ROOT, 'examples', 'mnist-badnets', 'victim.safetensors'), path.join(ext, 'dist', 'demo', 'victim.safetensors'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writes the victim and a job that validates into backdoor-audit-demo/ of the workspace', () => {
    const ws = path.join(dir, 'ws');
    fs.mkdirSync(ws);
    const d = prepareDemo(ext, ws);
    assert.equal(d.folder, path.join(ws, DEMO_FOLDER));
    assert.deepEqual(d.written.map((f) => path.basename(f)), ['victim.safetensors', 'audit.json']);
    assert.ok(fs.readFileSync(path.join(d.folder, 'victim.safetensors')).equals(fs.readFileSync(path.join(ROOT, 'examples', 'mnist-badnets', 'victim.safetensors'))));
    const job = validateJobObject(JSON.parse(fs.readFileSync(d.jobPath, 'utf8')), d.folder, d.jobPath);
    assert.equal((job as { defenses: unknown[] }).defenses.length, 2);
    // The same job as the example the README documents.
    const example = JSON.parse(fs.readFileSync(path.join(ROOT, 'examples', 'mnist-badnets', 'audit.json'), 'utf8'));
    delete example.$schema;
    assert.deepEqual(demoJob(), example);
    assert.deepEqual(fs.readdirSync(d.folder).sort(), ['audit.json', 'victim.safetensors'], 'no temporary file left');
  });

  it('keeps a job the user edited; without a workspace it uses a new temporary folder', () => {
    const ws = path.join(dir, 'ws');
    fs.mkdirSync(path.join(ws, DEMO_FOLDER), { recursive: true });
    const edited = '{"model": "victim.safetensors", "defenses": ["anp"]}\n';
    fs.writeFileSync(path.join(ws, DEMO_FOLDER, 'audit.json'), edited);
    const d = prepareDemo(ext, ws);
    assert.deepEqual(d.written.map((f) => path.basename(f)), ['victim.safetensors']);
    assert.equal(fs.readFileSync(d.jobPath, 'utf8'), edited);
    const t = prepareDemo(ext, undefined);
    try {
      assert.ok(t.folder.startsWith(path.join(os.tmpdir(), `${DEMO_FOLDER}-`)));
      assert.ok(fs.existsSync(t.jobPath));
    } finally {
      fs.rmSync(t.folder, { recursive: true, force: true });
    }
    assert.throws(() => prepareDemo(path.join(dir, 'nowhere'), ws), /the demo victim is missing from the extension/);
  });

  it('the walkthrough: three steps whose buttons and completion events name contributed commands, pages shipped', () => {
    const ids = new Set(pkg.contributes.commands.map((c: { command: string }) => c.command));
    const [w] = pkg.contributes.walkthroughs;
    assert.deepEqual(w.steps.map((s: { title: string }) => s.title), ['Try the demo', 'Purify your own model', 'Read the results']);
    const ignore = fs.readFileSync(path.join(ROOT, '.vscodeignore'), 'utf8');
    for (const s of w.steps as Array<{ description: string; media: { markdown: string }; completionEvents: string[] }>) {
      for (const m of s.description.matchAll(/\(command:([\w.]+)\)/g)) assert.ok(ids.has(m[1]), `${m[1]} is contributed`);
      for (const e of s.completionEvents) if (e.startsWith('onCommand:')) assert.ok(ids.has(e.slice(10)), e);
      assert.ok(fs.existsSync(path.join(ROOT, s.media.markdown)), s.media.markdown);
      assert.match(ignore, /^!media\/walkthrough\/\*\.md$/m, 'the pages travel in the .vsix');
    }
    assert.match(ignore, /^!dist\/demo\/victim\.safetensors$/m, 'the demo victim travels in the .vsix');
    assert.match(pkg.contributes.viewsWelcome[0].contents, /\[Run Demo\]\(command:backdoorAudit\.runDemo\)/);
  });
});
