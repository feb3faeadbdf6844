/**
 * The layers stay one-way: the engine never reaches up into the extension or the panel, src/shared depends on
 * nothing of ours, the panel takes only types from the engine, and no two folders import each other (directly
 * or round a loop). Checked on the real tree, and on the real tree plus one upward edge so that a rule that
 * cannot fire does not pass for a kept one.
 */
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { folderCycles, folderOf, importsOf, layeringViolations, readImportGraph, type ImportEdge } from '../helpers/import_graph';

const root = path.join(__dirname, '..', '..');

describe('import rules', () => {
  const edges = readImportGraph(root);

  it('reads the tree: hundreds of edges, the engine and the panel among them', () => {
    assert.ok(edges.length > 300, `only ${edges.length} edges`);
    assert.ok(edges.some((e) => e.from.startsWith('src/engine/jobs/') && e.to.startsWith('src/engine/')));
    assert.ok(edges.some((e) => e.from.startsWith('webview-ui/')));
  });

  it('the tree keeps every rule', () => {
    assert.deepEqual(layeringViolations(edges), []);
  });

  it('tells type-only imports from run-time ones', () => {
    const found = importsOf(
      'x.ts',
      [
        "import type { A } from './a';",
        "import { type B, type C } from './b';",
        "import { D, type E } from './d';",
        "import * as F from './f';",
        "export type { G } from './g';",
        "export { H } from './h';",
        "const i = require('./i');",
        "async function j() { return import('./j'); }",
        "let k: import('./k').K;",
      ].join('\n'),
    );
    assert.deepEqual(found, [
      { spec: './a', typeOnly: true },
      { spec: './b', typeOnly: true },
      { spec: './d', typeOnly: false },
      { spec: './f', typeOnly: false },
      { spec: './g', typeOnly: true },
      { spec: './h', typeOnly: false },
      { spec: './i', typeOnly: false },
      { spec: './j', typeOnly: false },
      { spec: './k', typeOnly: true },
    ]);
  });

  it('folders: src/engine/<x>, src/<x>, webview-ui; files directly in src/ and src/engine/ stand alone', () => {
    assert.equal(folderOf('src/engine/jobs/core.ts'), 'src/engine/jobs');
    assert.equal(folderOf('src/engine/formats/data/npy.ts'), 'src/engine/formats');
    assert.equal(folderOf('src/engine/errors.ts'), 'src/engine/errors.ts');
    assert.equal(folderOf('src/vscode/panel.ts'), 'src/vscode');
    assert.equal(folderOf('src/cli.ts'), 'src/cli.ts');
    assert.equal(folderOf('webview-ui/app.ts'), 'webview-ui');
  });

  describe('each rule fires on an added edge', () => {
    // What the added edge breaks beyond the tree as it is (nothing, once the tree keeps the rules).
    const before = layeringViolations(edges);
    const added = (e: ImportEdge) => layeringViolations([...edges, e]).filter((v) => !v.startsWith('import cycle') && !before.includes(v));
    it('engine -> the panel, the extension, vscode', () => {
      assert.deepEqual(added({ from: 'src/engine/jobs/core.ts', to: 'webview-ui/report.ts', typeOnly: false }), ['engine imports outside the engine and src/shared: src/engine/jobs/core.ts -> webview-ui/report.ts']);
      assert.equal(added({ from: 'src/engine/nn/model.ts', to: 'src/vscode/panel.ts', typeOnly: true }).length, 1);
      assert.deepEqual(added({ from: 'src/engine/nn/model.ts', to: 'vscode', typeOnly: false }), ['engine imports vscode: src/engine/nn/model.ts -> vscode']);
    });
    it('src/shared -> anything of ours', () => {
      assert.equal(added({ from: 'src/shared/results.ts', to: 'src/engine/backend/index.ts', typeOnly: true }).length, 1);
    });
    it('webview-ui -> the engine at run time (types are allowed)', () => {
      assert.equal(added({ from: 'webview-ui/app.ts', to: 'src/engine/jobs/core.ts', typeOnly: false }).length, 1);
      assert.deepEqual(added({ from: 'webview-ui/app.ts', to: 'src/engine/jobs/core.ts', typeOnly: true }), []);
    });
    it('a cycle between two folders, and round three', () => {
      assert.deepEqual(folderCycles([
        { from: 'src/engine/nn/a.ts', to: 'src/engine/models/b.ts', typeOnly: false },
        { from: 'src/engine/models/b.ts', to: 'src/engine/nn/a.ts', typeOnly: true },
      ]), ['import cycle between src/engine/models, src/engine/nn: src/engine/models/b.ts -> src/engine/nn/a.ts; src/engine/nn/a.ts -> src/engine/models/b.ts']);
      assert.equal(folderCycles([
        { from: 'src/engine/a/x.ts', to: 'src/engine/b/x.ts', typeOnly: false },
        { from: 'src/engine/b/x.ts', to: 'src/engine/c/x.ts', typeOnly: false },
        { from: 'src/engine/c/x.ts', to: 'src/engine/a/x.ts', typeOnly: false },
      ]).length, 1);
      assert.deepEqual(folderCycles([
        { from: 'src/engine/a/x.ts', to: 'src/engine/b/x.ts', typeOnly: false },
        { from: 'src/engine/a/y.ts', to: 'src/engine/a/x.ts', typeOnly: false },
      ]), []);
    });
  });
});
