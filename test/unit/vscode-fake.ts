/**
 * A fake `vscode` module for unit tests of the extension host (plain Node, no editor). Importing this file
 * first makes `require('vscode')` resolve to it; `fake` lets a test script the user's answers and read what
 * the extension showed. Only the API surface the extension uses is modelled.
 */
import Module = require('node:module');
import * as path from 'node:path';
import * as fs from 'node:fs';

type Listener<T> = (e: T) => unknown;

export class EventEmitter<T> {
  private ls = new Set<Listener<T>>();
  event = (l: Listener<T>) => {
    this.ls.add(l);
    return { dispose: () => this.ls.delete(l) };
  };
  fire(e: T): void {
    for (const l of [...this.ls]) l(e);
  }
  dispose(): void {
    this.ls.clear();
  }
}

export class Uri {
  readonly scheme = 'file';
  private constructor(readonly fsPath: string) {}
  static file(p: string): Uri {
    return new Uri(path.resolve(p));
  }
  static joinPath(base: Uri, ...parts: string[]): Uri {
    return new Uri(path.join(base.fsPath, ...parts));
  }
  get path(): string {
    return this.fsPath;
  }
  toString(): string {
    return `file://${this.fsPath}`;
  }
}

export class CancellationTokenSource {
  private em = new EventEmitter<void>();
  isCancellationRequested = false;
  token = { isCancellationRequested: false, onCancellationRequested: this.em.event };
  cancel(): void {
    this.isCancellationRequested = true;
    this.token.isCancellationRequested = true;
    this.em.fire();
  }
}

export enum ProgressLocation {
  SourceControl = 1,
  Window = 10,
  Notification = 15,
}
export enum ViewColumn {
  Active = -1,
  Beside = -2,
  One = 1,
}
export enum StatusBarAlignment {
  Left = 1,
  Right = 2,
}
export enum TreeItemCollapsibleState {
  None = 0,
  Collapsed = 1,
  Expanded = 2,
}
export class ThemeIcon {
  constructor(readonly id: string) {}
}
export class TreeItem {
  description?: string;
  tooltip?: string;
  contextValue?: string;
  iconPath?: unknown;
  resourceUri?: Uri;
  command?: { command: string; title: string; arguments?: unknown[] };
  constructor(
    readonly label: string,
    readonly collapsibleState?: TreeItemCollapsibleState,
  ) {}
}
export class RelativePattern {
  constructor(
    readonly base: Uri | string,
    readonly pattern: string,
  ) {}
}

export class FakeWebview {
  html = '';
  options: unknown = {};
  cspSource = 'vscode-webview://fake';
  posted: unknown[] = [];
  private recv = new EventEmitter<unknown>();
  onDidReceiveMessage = this.recv.event;
  asWebviewUri(u: Uri): Uri {
    return u;
  }
  postMessage(m: unknown): Promise<boolean> {
    this.posted.push(JSON.parse(JSON.stringify(m)));
    return Promise.resolve(true);
  }
  /** Test side: a message from the page. */
  send(m: unknown): void {
    this.recv.fire(m);
  }
}

/** A webview view (side bar) as VS Code hands it to a provider. */
export class FakeWebviewView {
  webview = new FakeWebview();
  private disp = new EventEmitter<void>();
  onDidDispose = this.disp.event;
  dispose(): void {
    this.disp.fire();
  }
}

export class FakePanel {
  webview = new FakeWebview();
  iconPath: unknown;
  disposed = false;
  revealed = 0;
  active = true;
  visible = true;
  private disp = new EventEmitter<void>();
  onDidDispose = this.disp.event;
  private viewState = new EventEmitter<{ webviewPanel: FakePanel }>();
  onDidChangeViewState = this.viewState.event;
  /** Test side: the user brings this panel to the front. */
  focus(): void {
    this.active = true;
    this.viewState.fire({ webviewPanel: this });
  }
  constructor(
    readonly viewType: string,
    public title: string,
  ) {}
  reveal(): void {
    this.revealed++;
  }
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.disp.fire();
  }
}

/** The Back button of a multi-step quick input. */
export const QuickInputButtons = { Back: { iconPath: new ThemeIcon('arrow-left'), tooltip: 'Back' } };

/** Queue this as an answer to press Back on that quick input (createQuickPick / createInputBox). */
export const PRESS_BACK = Symbol('press Back');

/**
 * A quick pick or input box made with createQuickPick / createInputBox: `show()` takes the next scripted
 * answer (a function gets the items) and then accepts it, presses Back (PRESS_BACK) or hides (undefined).
 */
function quickInput(kind: 'quickPick' | 'inputBox') {
  const accept = new EventEmitter<void>();
  const hide = new EventEmitter<void>();
  const button = new EventEmitter<unknown>();
  const value = new EventEmitter<string>();
  const q = {
    title: undefined as string | undefined,
    step: undefined as number | undefined,
    totalSteps: undefined as number | undefined,
    items: [] as unknown[],
    selectedItems: [] as unknown[],
    activeItems: [] as unknown[],
    buttons: [] as unknown[],
    value: '',
    prompt: undefined as string | undefined,
    placeholder: undefined as string | undefined,
    validationMessage: undefined as string | undefined,
    canSelectMany: false,
    ignoreFocusOut: false,
    matchOnDescription: false,
    onDidAccept: accept.event,
    onDidHide: hide.event,
    onDidTriggerButton: button.event,
    onDidChangeValue: value.event,
    show() {
      fake.steps.push({ kind, title: q.title, step: q.step, totalSteps: q.totalSteps, back: q.buttons.includes(QuickInputButtons.Back), value: q.value, selected: q.selectedItems.map((i) => (i as { label: string }).label), active: q.activeItems.map((i) => (i as { label: string }).label) });
      queueMicrotask(() => {
        const a = fake.next(kind, kind === 'quickPick' ? q.items : undefined, { title: q.title });
        if (a === PRESS_BACK) return button.fire(QuickInputButtons.Back);
        if (a === undefined) return hide.fire();
        if (kind === 'inputBox') {
          q.value = String(a);
          value.fire(q.value);
        } else q.selectedItems = Array.isArray(a) ? a : [a];
        accept.fire();
      });
    },
    hide: () => hide.fire(),
    dispose: () => undefined,
  };
  return q;
}

type Answer = unknown | ((items: unknown, opts: unknown) => unknown);

const trustGranted = new EventEmitter<void>();

export const fake = {
  trusted: true,
  /** Paths of the open workspace folders. */
  folders: [] as string[],
  config: new Map<string, unknown>(),
  messages: [] as { level: 'info' | 'warning' | 'error'; text: string }[],
  /** Answers to showQuickPick / showInputBox / showOpenDialog / show*Message, consumed in order. */
  answers: [] as Answer[],
  prompts: [] as { kind: string; title?: string; items?: unknown }[],
  commands: new Map<string, (...a: unknown[]) => unknown>(),
  executed: [] as { id: string; args: unknown[] }[],
  panels: [] as FakePanel[],
  log: [] as string[],
  files: [] as string[],
  progress: [] as { message?: string; increment?: number }[],
  cancelSource: undefined as CancellationTokenSource | undefined,
  clipboard: [] as string[],
  /** Every multi-step question shown: its title, step counter, Back button and defaults. */
  steps: [] as { kind: string; title?: string; step?: number; totalSteps?: number; back: boolean; value: string; selected: string[]; active: string[] }[],
  statusItems: [] as { text: string; tooltip: string; visible: boolean }[],
  deleted: [] as { path: string; useTrash: boolean }[],
  registered: { serializers: [] as string[], editors: [] as string[], trees: [] as string[], webviewViews: [] as string[] },
  webviewViewProviders: new Map<string, unknown>(),
  reset(): void {
    this.trusted = true;
    this.folders = [];
    this.config.clear();
    this.messages = [];
    this.answers = [];
    this.prompts = [];
    this.commands.clear();
    this.executed = [];
    this.panels = [];
    this.log = [];
    this.files = [];
    this.progress = [];
    this.cancelSource = undefined;
    this.clipboard = [];
    this.steps = [];
    this.statusItems = [];
    this.deleted = [];
    this.registered = { serializers: [], editors: [], trees: [], webviewViews: [] };
    this.webviewViewProviders.clear();
  },
  /** The user trusts the workspace: isTrusted turns true and onDidGrantWorkspaceTrust fires. */
  grantTrust(): void {
    this.trusted = true;
    trustGranted.fire();
  },
  next(kind: string, items?: unknown, opts?: { title?: string }): unknown {
    this.prompts.push({ kind, title: opts?.title, items });
    if (this.answers.length === 0) return undefined;
    const a = this.answers.shift();
    return typeof a === 'function' ? (a as (i: unknown, o: unknown) => unknown)(items, opts) : a;
  },
};

const disposable = { dispose: () => undefined };

function message(level: 'info' | 'warning' | 'error') {
  return (text: string, ...rest: unknown[]) => {
    fake.messages.push({ level, text });
    const items = rest.filter((r) => typeof r === 'string');
    // Messages with buttons take a scripted answer only when a test queued one for them.
    return Promise.resolve(items.length && typeof fake.answers[0] === 'string' && items.includes(fake.answers[0]) ? fake.answers.shift() : undefined);
  };
}

export const window = {
  createOutputChannel: (_name: string) => ({
    appendLine: (s: string) => fake.log.push(s),
    append: (s: string) => fake.log.push(s),
    show: () => undefined,
    dispose: () => undefined,
  }),
  showInformationMessage: message('info'),
  showWarningMessage: message('warning'),
  showErrorMessage: message('error'),
  showQuickPick: async (items: unknown, opts?: { title?: string }) => fake.next('quickPick', await items, opts),
  showInputBox: async (opts?: { title?: string }) => fake.next('inputBox', undefined, opts),
  showOpenDialog: async (opts?: { title?: string }) => fake.next('openDialog', undefined, opts),
  withProgress: async <T>(_o: unknown, task: (p: { report(v: { message?: string; increment?: number }): void }, t: CancellationTokenSource['token']) => Promise<T>) => {
    const src = new CancellationTokenSource();
    fake.cancelSource = src;
    return task({ report: (v) => fake.progress.push(v) }, src.token);
  },
  createWebviewPanel: (viewType: string, title: string) => {
    const p = new FakePanel(viewType, title);
    fake.panels.push(p);
    return p;
  },
  createStatusBarItem: () => {
    const item = { text: '', tooltip: '', command: '', name: '', visible: false, show: () => void (item.visible = true), hide: () => void (item.visible = false), dispose: () => undefined };
    fake.statusItems.push(item);
    return item;
  },
  registerWebviewPanelSerializer: (viewType: string) => {
    fake.registered.serializers.push(viewType);
    return disposable;
  },
  registerCustomEditorProvider: (viewType: string) => {
    fake.registered.editors.push(viewType);
    return disposable;
  },
  registerTreeDataProvider: (id: string) => {
    fake.registered.trees.push(id);
    return disposable;
  },
  registerWebviewViewProvider: (id: string, provider: unknown) => {
    fake.registered.webviewViews.push(id);
    fake.webviewViewProviders.set(id, provider);
    return disposable;
  },
  showTextDocument: async () => undefined,
  createQuickPick: () => quickInput('quickPick'),
  createInputBox: () => quickInput('inputBox'),
  showSaveDialog: async (opts?: { title?: string; defaultUri?: Uri }) => fake.next('saveDialog', opts?.defaultUri, opts),
  setStatusBarMessage: (text: string) => {
    fake.messages.push({ level: 'info', text });
    return disposable;
  },
  activeTextEditor: undefined,
};

/** What the extension put on the clipboard. */
export const env = {
  clipboard: {
    writeText: async (text: string) => void fake.clipboard.push(text),
  },
};

export const workspace = {
  get isTrusted() {
    return fake.trusted;
  },
  getConfiguration: (section: string) => ({
    get: <T>(key: string, def?: T) => (fake.config.has(`${section}.${key}`) ? (fake.config.get(`${section}.${key}`) as T) : def),
  }),
  findFiles: async () => fake.files.map((f) => Uri.file(f)),
  createFileSystemWatcher: () => ({
    onDidCreate: () => disposable,
    onDidChange: () => disposable,
    onDidDelete: () => disposable,
    dispose: () => undefined,
  }),
  asRelativePath: (p: Uri | string) => (typeof p === 'string' ? p : p.fsPath),
  textDocuments: [] as unknown[],
  get workspaceFolders() {
    return fake.folders.length ? fake.folders.map((f, index) => ({ uri: Uri.file(f), name: path.basename(f), index })) : undefined;
  },
  fs: {
    writeFile: async (uri: Uri, data: Uint8Array) => fs.writeFileSync(uri.fsPath, data),
    delete: async (uri: Uri, opts?: { recursive?: boolean; useTrash?: boolean }) => {
      fake.deleted.push({ path: uri.fsPath, useTrash: !!opts?.useTrash });
      fs.rmSync(uri.fsPath, { recursive: !!opts?.recursive });
    },
  },
  onDidGrantWorkspaceTrust: trustGranted.event,
  onDidChangeConfiguration: () => disposable,
};

export const commands = {
  registerCommand: (id: string, fn: (...a: unknown[]) => unknown) => {
    if (fake.commands.has(id)) throw new Error(`command ${id} registered twice`);
    fake.commands.set(id, fn);
    return { dispose: () => fake.commands.delete(id) };
  },
  executeCommand: async (id: string, ...args: unknown[]) => {
    fake.executed.push({ id, args });
    return fake.commands.get(id)?.(...args);
  },
};

/** `require('vscode')` resolves to this file from here on. */
const M = Module as unknown as { _resolveFilename: (req: string, ...rest: unknown[]) => string };
const original = M._resolveFilename;
M._resolveFilename = function (req: string, ...rest: unknown[]) {
  if (req === 'vscode') return __filename;
  return original.call(this, req, ...rest);
};
