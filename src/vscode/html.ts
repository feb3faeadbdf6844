/**
 * The HTML shell of the webviews: the bundle and the stylesheet from the extension folder through
 * asWebviewUri, a strict CSP (`default-src 'none'`, scripts only with this page's nonce), and a
 * `data-view` attribute that tells the bundle which view to render.
 */
import * as crypto from 'node:crypto';
import * as vscode from 'vscode';
import type { PageView } from '../shared/panel_messages';

export function nonce(): string {
  return crypto.randomBytes(16).toString('base64').replace(/[^A-Za-z0-9]/g, '');
}

/** Only the bundle and the stylesheet are reachable from the webview. */
export function webviewOptions(extensionUri: vscode.Uri): vscode.WebviewOptions {
  return {
    enableScripts: true,
    localResourceRoots: [vscode.Uri.joinPath(extensionUri, 'dist'), vscode.Uri.joinPath(extensionUri, 'media')],
  };
}

export function webviewHtml(webview: vscode.Webview, extensionUri: vscode.Uri, view: PageView, title: string): string {
  const n = nonce();
  const script = webview.asWebviewUri(vscode.Uri.joinPath(extensionUri, 'dist', 'webview.js'));
  const css = webview.asWebviewUri(vscode.Uri.joinPath(extensionUri, 'media', 'panel.css'));
  const csp = [
    "default-src 'none'",
    `img-src ${webview.cspSource} data:`,
    // The toolkit's elements style themselves through constructable stylesheets, which CSP does not block;
    // chart.js sizes its canvas through element.style (CSSOM), which CSP allows too. No 'unsafe-inline'. The one
    // <style> element the toolkit writes (its :focus-visible probe) carries the nonce it reads from the
    // csp-nonce meta tag below; without it the probe is refused, with a console error per page.
    `style-src ${webview.cspSource} 'nonce-${n}'`,
    `font-src ${webview.cspSource}`,
    `script-src 'nonce-${n}'`,
  ].join('; ');
  const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta property="csp-nonce" content="${n}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${css}">
<title>${esc(title)}</title>
</head>
<body data-view="${view}">
<main id="app"></main>
<script nonce="${n}" src="${script}"></script>
</body>
</html>`;
}
