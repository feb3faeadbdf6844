/**
 * A message that tells the user to run a command must name one that exists: every `"Backdoor Audit: <title>"`
 * quoted in the extension's sources is a contributed command's category and title.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.join(__dirname, '..', '..');

describe('vscode: command names in messages', () => {
  it('every command a message names is contributed under that title', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { contributes: { commands: Array<{ title: string; category?: string }> } };
    const titles = new Set(pkg.contributes.commands.map((c) => `${c.category ? `${c.category}: ` : ''}${c.title}`));
    const dir = path.join(ROOT, 'src', 'vscode');
    const named: string[] = [];
    for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.ts'))) {
      for (const m of fs.readFileSync(path.join(dir, f), 'utf8').matchAll(/"(Backdoor Audit: [^"]+)"/g)) named.push(`${f}: ${m[1]}`);
    }
    assert.ok(named.length >= 2, `found ${named.length}`);
    assert.deepEqual(named.filter((n) => !titles.has(n.slice(n.indexOf(': ') + 2))), []);
  });
});
