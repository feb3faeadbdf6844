/**
 * The panel's view code (webview-ui/render.ts) loaded into a happy-dom page for one suite: the page's globals
 * are installed before and removed after (other suites must not see a browser), chart.js is replaced by the
 * suite's stand-in (it needs a layout engine happy-dom lacks; labels become pixels, not markup) and the
 * webview toolkit by a stub (its design tokens need CSSOM happy-dom lacks; the elements' content is what the
 * view puts in them, so unregistered elements show the same text). The view code under test is the real one.
 */
import { Window } from 'happy-dom';
import type * as StateModule from '../../webview-ui/state';

export interface PanelDom<View> {
  win: Window;
  DomView: new (root: unknown, actions: Record<string, (...a: never[]) => void>, interactive: boolean) => View;
  state: typeof StateModule;
}

/** Registers mocha before/after hooks; the returned object is filled in by `before`. */
export function usePanelDom<View>(url: string, FakeChart: unknown): PanelDom<View> {
  const dom = { win: new Window({ url }) } as PanelDom<View>;
  const g = globalThis as Record<string, unknown>;
  const added: string[] = [];
  const loaded: string[] = [];
  const chartPath = require.resolve('chart.js');
  const toolkitPath = require.resolve('@vscode/webview-ui-toolkit');

  before(() => {
    const w = dom.win as unknown as Record<string, unknown>;
    const put = (k: string, v: unknown) => {
      if (g[k] !== undefined) return;
      g[k] = v;
      added.push(k);
    };
    for (let o: object | null = dom.win; o && o !== Object.prototype; o = Object.getPrototypeOf(o)) {
      for (const k of Object.getOwnPropertyNames(o)) if (/^[A-Z]/.test(k)) put(k, w[k]);
    }
    for (const k of ['document', 'customElements', 'navigator', 'location']) put(k, w[k]);
    for (const k of ['getComputedStyle', 'requestAnimationFrame', 'cancelAnimationFrame', 'matchMedia']) put(k, (w[k] as (...a: unknown[]) => unknown).bind(dom.win));
    put('window', dom.win);
    const chartStub = { Chart: FakeChart, BarController: {}, BarElement: {}, CategoryScale: {}, LinearScale: {}, PointElement: {}, ScatterController: {}, Legend: {}, Tooltip: {} };
    require.cache[chartPath] = { id: chartPath, filename: chartPath, loaded: true, exports: chartStub } as NodeJS.Module;
    const toolkitStub = { provideVSCodeDesignSystem: () => ({ register: () => undefined }), vsCodeBadge: () => ({}), vsCodeButton: () => ({}), vsCodeDivider: () => ({}), vsCodeLink: () => ({}), vsCodeProgressRing: () => ({}) };
    require.cache[toolkitPath] = { id: toolkitPath, filename: toolkitPath, loaded: true, exports: toolkitStub } as NodeJS.Module;
    // Loaded now, with a document to register the toolkit's elements in.
    const before = new Set(Object.keys(require.cache));
    dom.DomView = require('../../webview-ui/render').DomView;
    dom.state = require('../../webview-ui/state');
    loaded.push(...Object.keys(require.cache).filter((k) => !before.has(k)));
  });

  after(async () => {
    for (const k of added) delete g[k];
    for (const k of [chartPath, toolkitPath, ...loaded]) delete require.cache[k];
    await dom.win.happyDOM.abort();
    dom.win.close();
  });

  return dom;
}
