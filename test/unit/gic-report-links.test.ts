/**
 * report.html links the saved GIC files (the network g and the calibrated set named in each gic entry's
 * `files`) with relative links that resolve to those files in the output folder; the panel shows their paths.
 * A path that is not a plain relative path inside the output folder is never turned into a link.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { Window } from 'happy-dom';
import type * as StateModule from '../../webview-ui/state';
import { buildGrid, relativeHref } from '../../webview-ui/format';
import { useWasm } from '../helpers/backend';
import { GicNet, GIC_DEFAULTS, applyCalibration } from '../../src/engine/gic/gic';
import { saveCalibration } from '../../src/engine/gic/save';
import type { ImageSet } from '../../src/engine/data/dataset';
import { sampleResults, tmpdir } from './vscode-fixtures';

interface ViewLike {
  showResults(s: ReturnType<typeof StateModule.emptyState>): void;
}
type DomViewCtor = new (root: unknown, actions: Record<string, (...a: never[]) => void>, interactive: boolean) => ViewLike;

describe('GIC files in report.html', () => {
  const win = new Window({ url: 'https://report.invalid/out/report.html' });
  const g = globalThis as Record<string, unknown>;
  const added: string[] = [];
  const loaded: string[] = [];
  const chartPath = require.resolve('chart.js');
  const toolkitPath = require.resolve('@vscode/webview-ui-toolkit');
  let DomView: DomViewCtor;
  let state: typeof StateModule;

  before(() => {
    // A page's globals for this suite only; chart.js and the toolkit stubbed (happy-dom has no canvas layout).
    const w = win as unknown as Record<string, unknown>;
    const put = (k: string, v: unknown) => {
      if (g[k] !== undefined) return;
      g[k] = v;
      added.push(k);
    };
    for (let o: object | null = win; o && o !== Object.prototype; o = Object.getPrototypeOf(o)) {
      for (const k of Object.getOwnPropertyNames(o)) if (/^[A-Z]/.test(k)) put(k, w[k]);
    }
    for (const k of ['document', 'customElements', 'navigator', 'location']) put(k, w[k]);
    for (const k of ['getComputedStyle', 'requestAnimationFrame', 'cancelAnimationFrame', 'matchMedia']) put(k, (w[k] as (...a: unknown[]) => unknown).bind(win));
    put('window', win);
    class FakeChart {
      static defaults = { font: {} };
      static register(): void {}
      data: unknown;
      constructor(_canvas: unknown, cfg: { data: unknown }) {
        this.data = cfg.data;
      }
      update(): void {}
      destroy(): void {}
    }
    const chartStub = { Chart: FakeChart, BarController: {}, BarElement: {}, CategoryScale: {}, LinearScale: {}, PointElement: {}, ScatterController: {}, Legend: {}, Tooltip: {} };
    require.cache[chartPath] = { id: chartPath, filename: chartPath, loaded: true, exports: chartStub } as NodeJS.Module;
    const toolkitStub = { provideVSCodeDesignSystem: () => ({ register: () => undefined }), vsCodeBadge: () => ({}), vsCodeButton: () => ({}), vsCodeDivider: () => ({}), vsCodeLink: () => ({}), vsCodeProgressRing: () => ({}) };
    require.cache[toolkitPath] = { id: toolkitPath, filename: toolkitPath, loaded: true, exports: toolkitStub } as NodeJS.Module;
    const before = new Set(Object.keys(require.cache));
    DomView = require('../../webview-ui/render').DomView;
    state = require('../../webview-ui/state');
    loaded.push(...Object.keys(require.cache).filter((k) => !before.has(k)));
  });

  after(async () => {
    for (const k of added) delete g[k];
    for (const k of [chartPath, toolkitPath, ...loaded]) delete require.cache[k];
    await win.happyDOM.abort();
    win.close();
  });

  function show(results: ReturnType<typeof sampleResults>, interactive: boolean) {
    const root = win.document.createElement('main');
    win.document.body.replaceChildren(root);
    const view = new DomView(root, { openModel: () => undefined, openResultsJson: () => undefined, revealOutDir: () => undefined, cancel: () => undefined, action: () => undefined }, interactive);
    view.showResults(state.fromResults({ id: 'report', title: 'report', outDir: '.' }, results));
    return root;
  }

  it('relativeHref: plain relative paths only, every segment percent-encoded', () => {
    assert.equal(relativeHref('gic-ood-noise.safetensors'), 'gic-ood-noise.safetensors');
    assert.equal(relativeHref('gic/my set #1.npz'), 'gic/my%20set%20%231.npz');
    assert.equal(relativeHref('javascript:alert(1)'), 'javascript%3Aalert(1)');
    assert.equal(relativeHref('a?b=1'), 'a%3Fb%3D1');
    for (const bad of ['', '/etc/passwd', '../x.npz', 'a/../../x', './x', 'a//b', 'C:/x.npz', 'c:x', '\\\\host\\x', 'a\\b', 'a\nb', 'x\u0000']) {
      assert.equal(relativeHref(bad), undefined, JSON.stringify(bad));
    }
  });

  it('links the files saveCalibration wrote, relative to report.html, and they resolve to those files', async () => {
    await useWasm();
    const start = tf.memory().numTensors;
    const dir = tmpdir('ba-gic-report-');
    const set: ImageSet = { n: 2, shape: [4, 4, 1], x: Float32Array.from({ length: 32 }, (_, i) => (i % 7) / 7), y: Int32Array.from([0, 1]), numClasses: 10 };
    const net = new GicNet(set.shape, { ...GIC_DEFAULTS });
    const out = applyCalibration(net, set);
    const files = saveCalibration(net, out, dir, 'ood noise #2');
    net.dispose();
    assert.equal(tf.memory().numTensors, start);
    assert.deepEqual(files, { net: 'gic-ood noise #2.safetensors', images: 'gic-ood noise #2.npz' });
    const base = sampleResults();
    const results = { ...base, gic: [{ ...base.gic[0], aux: 'ood noise #2', files }] };

    const root = show(results, false);
    const anchors = Array.from(root.querySelectorAll('p.gic-files a'));
    assert.deepEqual(
      anchors.map((a) => [a.textContent, a.getAttribute('href')]),
      [
        [files.net, 'gic-ood%20noise%20%232.safetensors'],
        [files.images, 'gic-ood%20noise%20%232.npz'],
      ],
    );
    // Resolved against the report's URL they stay in its folder and name the saved files.
    for (const a of anchors) {
      const url = new URL(a.getAttribute('href')!, 'https://report.invalid/out/report.html');
      assert.equal(path.posix.dirname(url.pathname), '/out');
      assert.ok(fs.existsSync(path.join(dir, decodeURIComponent(path.posix.basename(url.pathname)))), url.pathname);
    }
    assert.match(root.querySelector('p.gic-files')!.textContent!, /^GIC files: network gic-ood noise #2\.safetensors, calibrated set gic-ood noise #2\.npz$/);

    // In the panel (a webview) the same files are shown as paths, not as links the webview would follow.
    const panel = show(results, true);
    assert.equal(panel.querySelectorAll('p.gic-files a').length, 0);
    assert.deepEqual(
      Array.from(panel.querySelectorAll('p.gic-files .path')).map((e) => e.textContent),
      [files.net, files.images],
    );
  });

  it('no link for a path outside the output folder; entries without files show none', () => {
    const base = sampleResults();
    const results = {
      ...base,
      gic: [
        { ...base.gic[0], aux: 'a', files: { net: '../../etc/passwd', images: 'javascript:alert(1)' } },
        { ...base.gic[0], aux: 'b' },
      ],
    };
    const grid = buildGrid(state.fromResults({ id: 'r', title: 'r', outDir: '.' }, results));
    assert.deepEqual(grid.groups.find((x) => x.aux === 'a')!.gicFiles, [{ kind: 'calibrated set', path: 'javascript:alert(1)', href: 'javascript%3Aalert(1)' }]);
    assert.equal(grid.groups.find((x) => x.aux === 'b')!.gicFiles, undefined);
    const root = show(results, false);
    const hrefs = Array.from(root.querySelectorAll('a')).map((a) => a.getAttribute('href'));
    assert.deepEqual(hrefs, ['javascript%3Aalert(1)']);
    assert.equal(new URL(hrefs[0]!, 'https://report.invalid/out/report.html').protocol, 'https:');
  });
});
