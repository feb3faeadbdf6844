/**
 * The webview's controller: validates what the host sends, folds it into the ViewState, persists it for
 * restore, and turns clicks into typed messages. DOM-free (the View is an interface) so that it is unit
 * tested in Node with a stubbed `acquireVsCodeApi()` and a recording view.
 */
import { isHostMessage, isRunInfo, type HostMessage, type InspectInfo, type ModelAction, type PanelState, type ViewMessage } from '../src/shared/panel_messages';
import { applyEvent, emptyState, fromResults, type ViewState } from './state';

/** The part of the object `acquireVsCodeApi()` returns that the panel uses. */
export interface WebviewApi {
  postMessage(message: ViewMessage): void;
  getState(): unknown;
  setState(state: unknown): void;
}

export interface View {
  showResults(s: ViewState): void;
  showInspect(file: string, info?: InspectInfo, error?: string): void;
}

/** What the panel saves with setState: the host's PanelState (`run`, read by the serializer) plus a snapshot. */
export interface SavedState extends PanelState {
  snapshot: ViewState;
}

function isSnapshot(v: unknown): v is ViewState {
  const s = v as ViewState;
  return typeof s === 'object' && s !== null && typeof s.status === 'string' && Array.isArray(s.rows) && Array.isArray(s.gic) && Array.isArray(s.embeddings) && Array.isArray(s.log);
}

export class App {
  state: ViewState = emptyState();
  /** Messages dropped by validation, kept for tests and for a hint in the console. */
  rejected = 0;

  constructor(
    private readonly api: WebviewApi,
    private readonly view: View,
    readonly mode: 'results' | 'model',
  ) {}

  /** Restores what the panel showed before a reload, then tells the host it is listening. */
  start(): void {
    if (this.mode === 'results') {
      const saved = this.api.getState() as Partial<SavedState> | undefined;
      if (saved && isRunInfo(saved.run) && isSnapshot(saved.snapshot)) {
        this.state = { ...saved.snapshot, run: saved.run };
      }
      this.view.showResults(this.state);
    }
    this.api.postMessage({ type: 'ready' });
  }

  /** Entry point of `window.addEventListener('message')`: anything not a valid HostMessage is ignored. */
  receive(data: unknown): void {
    if (!isHostMessage(data)) {
      this.rejected++;
      return;
    }
    this.handle(data);
  }

  private handle(m: HostMessage): void {
    switch (m.type) {
      case 'init': {
        if (m.results) this.state = fromResults(m.run, m.results);
        else if (m.running) this.state = this.state.run?.id === m.run.id ? { ...this.state, run: m.run } : emptyState(m.run, 'waiting');
        else if (this.state.run?.id === m.run.id && (this.state.status === 'running' || this.state.status === 'waiting')) {
          // The job died with the window (reload): keep what arrived and say so.
          this.state = { ...this.state, status: 'interrupted', progress: undefined };
        } else if (this.state.run?.id !== m.run.id) this.state = emptyState(m.run, 'interrupted');
        this.commit();
        return;
      }
      case 'event': {
        if (!this.state.run || m.runId !== this.state.run.id) {
          this.rejected++;
          return;
        }
        this.state = applyEvent(this.state, m.event);
        this.commit();
        return;
      }
      case 'inspect':
        this.view.showInspect(m.file, m.info, m.error);
        return;
    }
  }

  private commit(): void {
    if (this.state.run) {
      const saved: SavedState = { view: 'results', run: this.state.run, snapshot: this.state };
      this.api.setState(saved);
    }
    this.view.showResults(this.state);
  }

  openModel(relPath: string): void {
    this.api.postMessage({ type: 'openModel', path: relPath });
  }
  openResultsJson(): void {
    this.api.postMessage({ type: 'openResultsJson' });
  }
  revealOutDir(): void {
    this.api.postMessage({ type: 'revealOutDir' });
  }
  cancel(): void {
    this.api.postMessage({ type: 'cancel' });
  }
  action(a: ModelAction): void {
    this.api.postMessage({ type: 'action', action: a });
  }
  /** The calibration side view's link into the results panel. */
  showPanel(): void {
    this.api.postMessage({ type: 'showPanel' });
  }
  copyText(text: string): void {
    this.api.postMessage({ type: 'copy', text });
  }
  exportCsv(text: string): void {
    this.api.postMessage({ type: 'exportCsv', text });
  }
}
