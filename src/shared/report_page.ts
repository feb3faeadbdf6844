/**
 * report.html: a self-contained page of the panel's view, written by the CLI (`backdoor-audit demo`).
 *
 * Design: the page is the panel's own bundle (dist/webview.js) and stylesheet (media/panel.css) inlined,
 * plus the run's results embedded as JSON in a non-executed `<script type="application/json">` element. The
 * bundle notices that element at start (main.ts) and renders the results without a VS Code host. No
 * network, no second renderer to keep in sync with the panel.
 *
 * This module is pure (no DOM, no Node APIs): the CLI imports `renderReportHtml` and passes the file
 * contents it read; the webview imports `parseReportData`.
 */
import { isResults, isRunInfo, type Results, type RunInfo } from './panel_messages';

export const REPORT_DATA_ID = 'backdoor-audit-report';

export interface ReportInput {
  results: Results;
  /** Contents of dist/webview.js. */
  script: string;
  /** Contents of media/panel.css. */
  css: string;
  /** Page and panel title; defaults to the model's file name. */
  title?: string;
}

export interface ReportData {
  run: RunInfo;
  results: Results;
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);
}

/** JSON that is safe inside a `<script>` element: no `</script>`, no `<!--`, no U+2028/2029 surprises. */
export function jsonForScript(v: unknown): string {
  return JSON.stringify(v).replace(/</g, '\\u003c').replace(/>/g, '\\u003e').replace(/&/g, '\\u0026').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

/** A script body that cannot close its own element early. */
function inlineScript(js: string): string {
  return js.replace(/<\/(script)/gi, '<\\/$1').replace(/<!--/g, '<\\!--');
}

function inlineStyle(css: string): string {
  return css.replace(/<\/(style)/gi, '<\\/$1');
}

export function renderReportHtml(input: ReportInput): string {
  const model = input.results.model?.path ?? 'model';
  const title = input.title ?? `Backdoor Audit — ${model.split(/[\\/]/).pop()}`;
  const data: ReportData = { run: { id: 'report', title, outDir: '.' }, results: input.results };
  // The report has no VS Code theme: panel.css falls back to light colours (and follows prefers-color-scheme).
  return [
    '<!DOCTYPE html>',
    '<html lang="en">',
    '<head>',
    '<meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>${escapeHtml(title)}</title>`,
    `<style>${inlineStyle(input.css)}</style>`,
    '</head>',
    '<body class="report" data-view="results">',
    '<main id="app"></main>',
    `<script type="application/json" id="${REPORT_DATA_ID}">${jsonForScript(data)}</script>`,
    `<script>${inlineScript(input.script)}</script>`,
    '</body>',
    '</html>',
    '',
  ].join('\n');
}

/** Reads the embedded data back; undefined when it is not a valid run (a hand-edited or truncated page). */
export function parseReportData(text: string): ReportData | undefined {
  try {
    const v = JSON.parse(text) as Partial<ReportData>;
    return isRunInfo(v.run) && isResults(v.results) ? { run: v.run, results: v.results } : undefined;
  } catch {
    return undefined;
  }
}
