/**
 * The import graph of our own code (src/ and webview-ui/), read with the TypeScript parser, and the layering
 * rules it must keep. Kept apart from the test so that the test can check the rules both on the real tree and
 * on the real tree plus one added edge (a rule that never fires proves nothing).
 *
 * Rules (DESIGN.md, "The shape"):
 * - the engine imports only the engine and src/shared (never `vscode`, src/vscode, webview-ui, the entry points);
 * - src/shared imports nothing of ours outside src/shared, and no `vscode`;
 * - webview-ui imports the engine only for types (nothing of the engine is bundled into the page) and nothing of
 *   src/vscode, src/cli or the entry points;
 * - no cycle between folders (a folder is src/engine/<x>, src/<x>, webview-ui; a file directly in src/ or
 *   src/engine/ is a unit of its own).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ts from 'typescript';

export interface ImportEdge {
  /** Importing file, relative to the repository root, with forward slashes. */
  from: string;
  /** The resolved file of ours (relative path), or the bare package name. */
  to: string;
  /** True when nothing of `to` is kept at run time (`import type`, `import('x').T`, all specifiers type-only). */
  typeOnly: boolean;
}

const SOURCE_ROOTS = ['src', 'webview-ui'];

function listTs(dir: string, out: string[] = []): string[] {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) listTs(p, out);
    else if (e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

function resolveRelative(root: string, fromFile: string, spec: string): string {
  const base = path.resolve(path.dirname(fromFile), spec);
  for (const c of [base + '.ts', path.join(base, 'index.ts'), base]) {
    if (fs.existsSync(c) && fs.statSync(c).isFile()) return path.relative(root, c).split(path.sep).join('/');
  }
  // Unresolved: kept as written so that the rules still see where it points.
  return path.relative(root, base).split(path.sep).join('/');
}

/** The module specifiers one file imports, with whether each is only for types. */
export function importsOf(fileName: string, text: string): { spec: string; typeOnly: boolean }[] {
  const sf = ts.createSourceFile(fileName, text, ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS);
  const found: { spec: string; typeOnly: boolean }[] = [];
  const visit = (n: ts.Node): void => {
    if (ts.isImportDeclaration(n) && ts.isStringLiteral(n.moduleSpecifier)) {
      const c = n.importClause;
      let typeOnly = !!c?.isTypeOnly;
      if (c && !typeOnly && !c.name && c.namedBindings && ts.isNamedImports(c.namedBindings)) {
        typeOnly = c.namedBindings.elements.length > 0 && c.namedBindings.elements.every((e) => e.isTypeOnly);
      }
      found.push({ spec: n.moduleSpecifier.text, typeOnly });
    } else if (ts.isExportDeclaration(n) && n.moduleSpecifier && ts.isStringLiteral(n.moduleSpecifier)) {
      const typeOnly = n.isTypeOnly || (!!n.exportClause && ts.isNamedExports(n.exportClause) && n.exportClause.elements.length > 0 && n.exportClause.elements.every((e) => e.isTypeOnly));
      found.push({ spec: n.moduleSpecifier.text, typeOnly });
    } else if (ts.isImportEqualsDeclaration(n) && ts.isExternalModuleReference(n.moduleReference) && ts.isStringLiteral(n.moduleReference.expression)) {
      found.push({ spec: n.moduleReference.expression.text, typeOnly: n.isTypeOnly });
    } else if (ts.isImportTypeNode(n) && ts.isLiteralTypeNode(n.argument) && ts.isStringLiteral(n.argument.literal)) {
      found.push({ spec: n.argument.literal.text, typeOnly: true });
    } else if (ts.isCallExpression(n) && n.arguments.length >= 1 && ts.isStringLiteral(n.arguments[0])) {
      const callee = n.expression;
      const isRequire = ts.isIdentifier(callee) && callee.text === 'require';
      const isDynamicImport = callee.kind === ts.SyntaxKind.ImportKeyword;
      if (isRequire || isDynamicImport) found.push({ spec: n.arguments[0].text, typeOnly: false });
    }
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return found;
}

/** Every import edge of src/ and webview-ui/ under `root`. */
export function readImportGraph(root: string): ImportEdge[] {
  const edges: ImportEdge[] = [];
  for (const r of SOURCE_ROOTS) {
    for (const file of listTs(path.join(root, r))) {
      const from = path.relative(root, file).split(path.sep).join('/');
      for (const { spec, typeOnly } of importsOf(file, fs.readFileSync(file, 'utf8'))) {
        const to = spec.startsWith('.') ? resolveRelative(root, file, spec) : spec.startsWith('node:') ? spec : spec.split('/').slice(0, spec.startsWith('@') ? 2 : 1).join('/');
        edges.push({ from, to, typeOnly });
      }
    }
  }
  return edges;
}

/** True for a path of ours (src/ or webview-ui/), false for a package. */
function ours(p: string): boolean {
  return SOURCE_ROOTS.some((r) => p === r || p.startsWith(r + '/'));
}

/** The folder a file belongs to for the cycle rule. */
export function folderOf(file: string): string {
  const parts = file.split('/');
  if (parts[0] === 'webview-ui') return 'webview-ui';
  if (parts[0] === 'src' && parts[1] === 'engine') return parts.length > 3 ? parts.slice(0, 3).join('/') : file;
  if (parts[0] === 'src') return parts.length > 2 ? parts.slice(0, 2).join('/') : file;
  return parts.slice(0, -1).join('/');
}

const under = (p: string, dir: string) => p.startsWith(dir + '/');

/** One line per broken rule; empty when the graph keeps them all. */
export function layeringViolations(edges: ImportEdge[]): string[] {
  const out: string[] = [];
  for (const e of edges) {
    const edge = `${e.from} -> ${e.to}${e.typeOnly ? ' (type)' : ''}`;
    if (under(e.from, 'src/engine')) {
      if (e.to === 'vscode') out.push(`engine imports vscode: ${edge}`);
      else if (ours(e.to) && !under(e.to, 'src/engine') && !under(e.to, 'src/shared')) out.push(`engine imports outside the engine and src/shared: ${edge}`);
    }
    if (under(e.from, 'src/shared')) {
      if (e.to === 'vscode') out.push(`src/shared imports vscode: ${edge}`);
      else if (ours(e.to) && !under(e.to, 'src/shared')) out.push(`src/shared imports our code outside src/shared: ${edge}`);
    }
    if (under(e.from, 'webview-ui')) {
      if (e.to === 'vscode') out.push(`webview-ui imports vscode: ${edge}`);
      else if (under(e.to, 'src/engine') && !e.typeOnly) out.push(`webview-ui imports the engine at run time: ${edge}`);
      else if (ours(e.to) && !under(e.to, 'webview-ui') && !under(e.to, 'src/shared') && !under(e.to, 'src/engine')) out.push(`webview-ui imports the extension side: ${edge}`);
    }
  }
  out.push(...folderCycles(edges));
  return out;
}

/** Cycles between folders (strongly connected components of more than one folder), with an edge of each. */
export function folderCycles(edges: ImportEdge[]): string[] {
  const graph = new Map<string, Map<string, ImportEdge>>();
  for (const e of edges) {
    if (!ours(e.to)) continue;
    const a = folderOf(e.from);
    const b = folderOf(e.to);
    if (a === b) continue;
    if (!graph.has(a)) graph.set(a, new Map());
    if (!graph.has(b)) graph.set(b, new Map());
    if (!graph.get(a)!.has(b)) graph.get(a)!.set(b, e);
  }
  // Tarjan's strongly connected components.
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  const connect = (v: string): void => {
    index.set(v, next);
    low.set(v, next);
    next++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v)!.keys()) {
      if (!index.has(w)) {
        connect(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) === index.get(v)) {
      const c: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        c.push(w);
      } while (w !== v);
      if (c.length > 1) components.push(c.sort());
    }
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) connect(v);
  return components.map((c) => {
    const inside = c.flatMap((a) => [...graph.get(a)!.entries()].filter(([b]) => c.includes(b)).map(([, e]) => `${e.from} -> ${e.to}`));
    return `import cycle between ${c.join(', ')}: ${inside.join('; ')}`;
  });
}
