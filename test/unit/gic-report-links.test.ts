/**
 * report.html links the saved GIC files (the network g and the calibrated set named in each gic entry's
 * `files`) with relative links that resolve to those files in the output folder; the panel shows their paths.
 * A path that is not a plain relative path inside the output folder is never turned into a link.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type * as StateModule from '../../webview-ui/state';
import { buildGrid, relativeHref } from '../../webview-ui/format';
import { useWasm } from '../helpers/backend';
import { GicNet, GIC_DEFAULTS, applyCalibration } from '../../src/engine/gic/gic';
import { saveCalibration } from '../../src/engine/gic/save';
import type { ImageSet } from '../../src/engine/data/dataset';
import { sampleResults, tmpdir } from './vscode-fixtures';
import { usePanelDom } from '../helpers/panel-dom';

interface ViewLike {
  showResults(s: ReturnType<typeof StateModule.emptyState>): void;
}

/** chart.js stand-in: the embeddings chart is not under test here (happy-dom has no canvas layout). */
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

describe('GIC files in report.html', () => {
  const dom = usePanelDom<ViewLike>('https://report.invalid/out/report.html', FakeChart);

  function show(results: ReturnType<typeof sampleResults>, interactive: boolean) {
    const root = dom.win.document.createElement('main');
    dom.win.document.body.replaceChildren(root);
    const view = new dom.DomView(root, { openModel: () => undefined, openResultsJson: () => undefined, revealOutDir: () => undefined, cancel: () => undefined, action: () => undefined }, interactive);
    view.showResults(dom.state.fromResults({ id: 'report', title: 'report', outDir: '.' }, results));
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
    const out = await applyCalibration(net, set);
    const files = await saveCalibration(net, out, dir, 'ood noise #2');
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
    const grid = buildGrid(dom.state.fromResults({ id: 'r', title: 'r', outDir: '.' }, results));
    assert.deepEqual(grid.groups.find((x) => x.aux === 'a')!.gicFiles, [{ kind: 'calibrated set', path: 'javascript:alert(1)', href: 'javascript%3Aalert(1)' }]);
    assert.equal(grid.groups.find((x) => x.aux === 'b')!.gicFiles, undefined);
    const root = show(results, false);
    const hrefs = Array.from(root.querySelectorAll('a')).map((a) => a.getAttribute('href'));
    assert.deepEqual(hrefs, ['javascript%3Aalert(1)']);
    assert.equal(new URL(hrefs[0]!, 'https://report.invalid/out/report.html').protocol, 'https:');
  });
});
