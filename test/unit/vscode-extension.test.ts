/**
 * The extension's manifest and activation, against the fake `vscode` module: every contributed command is
 * registered and every registered command contributed, menus name real commands, the custom editors, the
 * runs view and the panel serializer are registered, and untrusted workspaces are refused.
 */
import { fake, Uri } from './vscode-fake';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { activate } from '../../src/extension';
import { COMMANDS } from '../../src/vscode/commands';

const root = path.join(__dirname, '..', '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));

function fakeContext() {
  const state = new Map<string, unknown>();
  return {
    subscriptions: [] as { dispose(): unknown }[],
    extensionPath: root,
    extensionUri: Uri.file(root),
    workspaceState: { get: <T>(k: string, d?: T) => (state.has(k) ? (state.get(k) as T) : d), update: async (k: string, v: unknown) => void state.set(k, v), keys: () => [...state.keys()] },
  };
}

describe('vscode extension: manifest and activation', () => {
  beforeEach(() => fake.reset());

  it('registers exactly the contributed commands', () => {
    const ctx = fakeContext();
    activate(ctx as never);
    const contributed = pkg.contributes.commands.map((c: { command: string }) => c.command).sort();
    assert.deepEqual([...fake.commands.keys()].sort(), contributed);
    assert.deepEqual([...COMMANDS].sort(), contributed);
    for (const d of ctx.subscriptions) d.dispose();
  });

  it('registers the panel serializer, both inspector view types and the runs view', () => {
    const ctx = fakeContext();
    activate(ctx as never);
    assert.deepEqual(fake.registered.serializers, ['backdoorAudit.results']);
    const editors = pkg.contributes.customEditors.map((e: { viewType: string }) => e.viewType).sort();
    assert.deepEqual([...fake.registered.editors].sort(), editors);
    const views = pkg.contributes.views.backdoorAudit as Array<{ id: string; type?: string }>;
    assert.deepEqual(fake.registered.trees, views.filter((v) => v.type !== 'webview').map((v) => v.id));
    assert.deepEqual(fake.registered.webviewViews, views.filter((v) => v.type === 'webview').map((v) => v.id));
    assert.deepEqual(fake.registered.webviewViews, ['backdoorAudit.calibration']);
    assert.ok(pkg.activationEvents.includes('onWebviewPanel:backdoorAudit.results'), 'the serializer needs its activation event');
    for (const d of ctx.subscriptions) d.dispose();
  });

  it('menus name contributed commands, under a category, with context-only commands hidden from the palette', () => {
    const ids = new Set(pkg.contributes.commands.map((c: { command: string }) => c.command));
    for (const [menu, items] of Object.entries(pkg.contributes.menus as Record<string, { command: string; when?: string }[]>)) {
      for (const it of items) assert.ok(ids.has(it.command), `${menu} names unknown ${it.command}`);
    }
    for (const c of pkg.contributes.commands) assert.equal(c.category, 'Backdoor Audit');
    const hidden = pkg.contributes.menus.commandPalette.filter((m: { when: string }) => m.when === 'false').map((m: { command: string }) => m.command);
    // Context-only: the Explorer's "use as aux" and the Past Runs item actions (they act on the clicked run).
    assert.deepEqual(hidden, ['backdoorAudit.useAsAux', 'backdoorAudit.revealRun', 'backdoorAudit.openRunResultsJson', 'backdoorAudit.rerun', 'backdoorAudit.deleteRun', 'backdoorAudit.cancelJob']);
    for (const m of pkg.contributes.menus['view/item/context']) {
      assert.equal(m.when, `view == backdoorAudit.runs && viewItem == backdoorAudit.${m.command === 'backdoorAudit.cancelJob' ? 'runningJob' : 'run'}`);
    }
    const ctxMenu = pkg.contributes.menus['explorer/context'];
    const purify = ctxMenu.find((m: { command: string }) => m.command === 'backdoorAudit.purify');
    assert.match(purify.when, /pt\|pth\|onnx\|safetensors/);
    assert.match(purify.when, /model\.json/);
  });

  it('is disabled in untrusted workspaces, runs where the files are, validates audit.json', () => {
    assert.equal(pkg.capabilities.untrustedWorkspaces.supported, false);
    assert.deepEqual(pkg.extensionKind, ['workspace']);
    assert.equal(pkg.main, './dist/extension.js');
    assert.ok(pkg.contributes.jsonValidation.some((j: { fileMatch: string[] }) => j.fileMatch.includes('audit.json')));
    const option = pkg.contributes.customEditors.find((e: { priority: string }) => e.priority === 'option');
    assert.deepEqual(option.selector.map((s: { filenamePattern: string }) => s.filenamePattern).sort(), ['*.pt', '*.pth', 'model.json']);
    for (const k of ['device', 'profile', 'gic.delta', 'gic.norm', 'outputFolder']) assert.ok(pkg.contributes.configuration.properties[`backdoorAudit.${k}`], k);
    assert.ok(fs.existsSync(path.join(root, pkg.icon)), 'the Marketplace icon exists');
  });
});
