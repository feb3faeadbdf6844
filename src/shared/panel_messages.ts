/**
 * Messages between the extension host and the two webviews it opens (the results panel and the model
 * inspector). This module imports neither `vscode` nor the DOM, so both sides compile it. Every message is
 * validated on arrival: a webview is a separate, less trusted context, and a stale panel restored after an
 * upgrade may speak an older dialect.
 */
import { isRunEvent, type RunEvent } from './run_events';
import type { Results } from './results';

/** Which run a results panel shows. `outDir` is where results.json and the purified models are. */
export interface RunInfo {
  id: string;
  title: string;
  outDir: string;
  jobPath?: string;
}

/** What `backdoor-audit inspect --json` prints; kept loose because the panel only lists it. */
export type InspectInfo = Record<string, unknown>;

export type HostMessage =
  /** A whole run at once: a finished run from disk, or a restored panel whose job has ended. */
  | { type: 'init'; run: RunInfo; results?: Results; running: boolean }
  /** One live event of the job this panel follows. */
  | { type: 'event'; runId: string; event: RunEvent }
  /** The model inspector's summary, or why it could not be read. */
  | { type: 'inspect'; file: string; info?: InspectInfo; error?: string };

export type ModelAction = 'purify' | 'evaluate' | 'calibrate';
export const MODEL_ACTIONS: readonly ModelAction[] = ['purify', 'evaluate', 'calibrate'];

export type ViewMessage =
  /** The page has loaded and listens: the host sends nothing before this (the "ready" handshake). */
  | { type: 'ready' }
  /** Open a purified model; `path` is relative to the run's output folder (as results.json stores it). */
  | { type: 'openModel'; path: string }
  | { type: 'openResultsJson' }
  | { type: 'revealOutDir' }
  | { type: 'cancel' }
  /** A button of the model inspector. */
  | { type: 'action'; action: ModelAction }
  /** Put this text (a table as Markdown or CSV) on the clipboard. */
  | { type: 'copy'; text: string }
  /** Save this CSV where the user chooses (a save dialog opened in the run folder). */
  | { type: 'exportCsv'; text: string }
  /** The calibration side view's link: show the run it follows in the results panel. */
  | { type: 'showPanel' };

/** The most text a copy or export message may carry (a results table is far smaller). */
export const MAX_TABLE_TEXT = 8 * 1024 * 1024;

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function isRunInfo(v: unknown): v is RunInfo {
  return (
    isObj(v) &&
    typeof v.id === 'string' &&
    typeof v.title === 'string' &&
    typeof v.outDir === 'string' &&
    (v.jobPath === undefined || typeof v.jobPath === 'string')
  );
}

/** Structural check of a results.json value: enough that the renderer can walk it without throwing. */
export function isResults(v: unknown): v is Results {
  return (
    isObj(v) &&
    typeof v.schema === 'string' &&
    v.schema.startsWith('backdoor-audit/results@') &&
    isObj(v.model) &&
    isObj(v.baseline) &&
    Array.isArray(v.rows) &&
    v.rows.every((r) => isObj(r) && typeof r.aux === 'string' && typeof r.defense === 'string' && typeof r.gic === 'boolean') &&
    (v.gic === undefined || Array.isArray(v.gic)) &&
    (v.embeddings === undefined || Array.isArray(v.embeddings))
  );
}

export function isHostMessage(v: unknown): v is HostMessage {
  if (!isObj(v)) return false;
  switch (v.type) {
    case 'init':
      return isRunInfo(v.run) && typeof v.running === 'boolean' && (v.results === undefined || isResults(v.results));
    case 'event':
      return typeof v.runId === 'string' && isRunEvent(v.event);
    case 'inspect':
      return typeof v.file === 'string' && (v.info === undefined || isObj(v.info)) && (v.error === undefined || typeof v.error === 'string');
    default:
      return false;
  }
}

/** `v` has exactly these keys: a message with a field the protocol does not define is not that message. */
function only(v: Record<string, unknown>, ...keys: string[]): boolean {
  return Object.keys(v).every((k) => keys.includes(k));
}

/**
 * A message from a webview, checked field by field before the host acts on it: an unknown type, a missing,
 * extra or wrongly typed field, and anything that is not a plain object are refused.
 */
export function isViewMessage(v: unknown): v is ViewMessage {
  if (!isObj(v) || (Object.getPrototypeOf(v) !== Object.prototype && Object.getPrototypeOf(v) !== null)) return false;
  switch (v.type) {
    case 'ready':
    case 'showPanel':
    case 'openResultsJson':
    case 'revealOutDir':
    case 'cancel':
      return only(v, 'type');
    case 'openModel':
      return only(v, 'type', 'path') && typeof v.path === 'string' && v.path.length > 0 && v.path.length < 4096;
    case 'action':
      return only(v, 'type', 'action') && typeof v.action === 'string' && MODEL_ACTIONS.includes(v.action as ModelAction);
    case 'copy':
    case 'exportCsv':
      return only(v, 'type', 'text') && typeof v.text === 'string' && v.text.length <= MAX_TABLE_TEXT;
    default:
      return false;
  }
}

/** Which page the bundle renders (`<body data-view>`): the results panel, the model inspector, the calibration side view. */
export type PageView = 'results' | 'model' | 'calibration';

/** What the results panel keeps in `vscode.setState` so that a reload restores it (see the serializer). */
export interface PanelState {
  view: 'results';
  run: RunInfo;
}

export function isPanelState(v: unknown): v is PanelState {
  return isObj(v) && v.view === 'results' && isRunInfo(v.run);
}

export type { RunEvent, Results };
