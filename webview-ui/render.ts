/**
 * DOM rendering of the results panel and the model inspector. Every label that comes from a job, a model
 * file or results.json is inserted as text (textContent / createTextNode), never as HTML: aux names and
 * layer names are user-controlled. Colours come from --vscode-* variables through panel.css.
 */
import type { InspectInfo, ModelAction } from '../src/shared/panel_messages';
import type { View } from './app';
import { Charts } from './charts';
import { DiffView } from './diff_view';
import { AUX_TYPE_NOTES, backendText, buildGrid, classColour, figureChartLabel, figureSeries, galleryImage, pct, relativeHref, scatterLabel, statusAnnouncement, statusText, type GicFileLink, type GridCell } from './format';
import { ResultsTableView } from './results_table_view';
import { ANOMALY_THRESHOLD, anomalyChartLabel, anomalySeries, triggerCards } from './detection_format';
import { fractionDone, type ViewState } from './state';
import { badge, button, divider, link, progressRing, registerToolkit } from './toolkit';
import { el, galleryCell } from './dom';

export interface Actions {
  openModel(relPath: string): void;
  openResultsJson(): void;
  revealOutDir(): void;
  cancel(): void;
  action(a: ModelAction): void;
  /** Put a table's text on the clipboard (the host's in VS Code, the browser's in report.html). */
  copyText(text: string): void;
  /** Save a CSV (a save dialog in VS Code, a download in report.html). */
  exportCsv(text: string): void;
}

function section(title: string, id: string): { root: HTMLElement; body: HTMLElement } {
  const root = el('section', 'section');
  root.id = id;
  root.append(el('h2', undefined, title));
  const body = el('div', 'section-body');
  root.append(body);
  return { root, body };
}

export class DomView implements View {
  private charts?: Charts;
  private header = el('header', 'header');
  private status = el('div', 'status');
  private grid = section('Purification results', 'grid');
  private chart = section('ACC and ASR', 'chart');
  private chartNote = el('p', 'muted chart-note');
  private chartCanvas = el('canvas');
  private table = section('Results table', 'results-table');
  private tableView?: ResultsTableView;
  /** Announces status changes to screen readers (polite); the visible status line below updates freely. */
  private announcer = el('div', 'visually-hidden');
  private diff = section('What the defenses changed (model diff)', 'model-diff');
  private diffView?: DiffView;
  private embed = section('Feature embeddings', 'embeddings');
  private embedSlots = new Map<string, { wrap: HTMLElement; canvas: HTMLCanvasElement; legend: HTMLElement }>();
  private gallery = section('Calibrated examples (GIC)', 'gallery');
  private galleryShown = '';
  private detection = section('Trigger detection (Neural Cleanse)', 'detection');
  private built = false;

  constructor(
    private readonly root: HTMLElement,
    private readonly actions: Actions,
    /** False in the standalone report.html: no host to open models or cancel jobs. */
    private readonly interactive: boolean,
  ) {
    registerToolkit();
  }

  private build(): void {
    if (this.built) return;
    this.built = true;
    const chartBox = el('div', 'chart-box');
    chartBox.append(this.chartCanvas);
    this.chart.body.append(chartBox, this.chartNote);
    this.diff.body.append(el('p', 'muted', 'Per layer of the purified model against the victim: ‖W′−W‖/‖W‖ over weight and bias, channels zeroed (BatchNorm gamma 0, all-zero filters or head columns), the relative change of the BatchNorm running statistics, and inserted modules. Bars in the alarm colour: layers with zeroed channels.'));
    this.tableView = new ResultsTableView(this.table.body, { copyText: (t) => this.actions.copyText(t), exportCsv: (t) => this.actions.exportCsv(t) });
    this.announcer.setAttribute('role', 'status');
    this.announcer.setAttribute('aria-live', 'polite');
    this.announcer.setAttribute('aria-atomic', 'true');
    this.chartCanvas.setAttribute('role', 'img');
    this.diffView = new DiffView(this.diff.body, () => (this.charts ??= new Charts()));
    this.root.replaceChildren(this.header, this.announcer, this.status, this.grid.root, this.table.root, this.chart.root, this.diff.root, this.embed.root, this.gallery.root, this.detection.root);
    // Theme switches change the --vscode-* variables; charts read colours once, so redraw them.
    new MutationObserver(() => {
      this.charts?.retheme();
      this.diffView?.invalidate();
      this.detectionShown = '';
      this.embedSlots.clear();
      this.embed.body.replaceChildren();
      if (this.last) this.showResults(this.last);
    }).observe(document.body, { attributes: true, attributeFilter: ['class'] });
  }

  private last?: ViewState;

  showResults(s: ViewState): void {
    this.build();
    this.last = s;
    this.renderHeader(s);
    this.renderStatus(s);
    this.renderGrid(s);
    this.table.root.hidden = !this.tableView!.render(s);
    this.renderCharts(s);
    this.diff.root.hidden = !this.diffView!.render(s);
    this.renderGallery(s);
    this.renderDetection(s);
  }

  private renderHeader(s: ViewState): void {
    const h = this.header;
    h.replaceChildren();
    const title = el('h1', undefined, s.run?.title ?? 'Backdoor Audit');
    h.append(title);
    const facts = el('div', 'facts');
    if (s.model) {
      const m = s.model;
      facts.append(el('span', undefined, `${m.arch} · ${m.format} · ${m.inputShape.join('×')} · ${m.numClasses} classes · ${m.params.toLocaleString('en-US')} parameters`));
    }
    if (s.backend) facts.append(badge(backendText(s.backend)));
    h.append(facts);
    if (this.interactive && s.run) {
      const bar = el('div', 'toolbar');
      if (s.status === 'running' || s.status === 'waiting') bar.append(button('Cancel', () => this.actions.cancel(), 'secondary', 'Stop the job between batches; nothing is written'));
      if (s.status === 'done') bar.append(button('Open results.json', () => this.actions.openResultsJson()));
      bar.append(button('Reveal Output Folder', () => this.actions.revealOutDir()));
      h.append(bar);
    }
  }

  private renderStatus(s: ViewState): void {
    const said = statusAnnouncement(s);
    if (this.announcer.textContent !== said) this.announcer.textContent = said;
    const st = this.status;
    st.replaceChildren();
    st.className = `status status-${s.status}`;
    const line = el('div', 'status-line');
    if (s.status === 'running' || s.status === 'waiting') line.append(progressRing());
    line.append(el('span', 'status-text', statusText(s)));
    st.append(line);
    const f = fractionDone(s);
    if (s.status === 'running' && f !== undefined) {
      const meter = el('div', 'meter');
      const fill = el('div', 'meter-fill');
      fill.style.width = `${Math.round(f * 100)}%`;
      meter.append(fill);
      st.append(meter);
    }
    if (s.status === 'running' && s.log.length) st.append(el('pre', 'log', s.log.join('\n')));
  }

  private metricCells(tr: HTMLTableRowElement, c: GridCell | undefined, running: boolean): void {
    if (!c) {
      for (let i = 0; i < 5; i++) tr.append(el('td', 'num pending', running ? '…' : '—'));
      return;
    }
    if (c.error) {
      const td = el('td', 'error', `failed: ${c.error}`);
      td.colSpan = 5;
      td.title = c.error;
      tr.append(td);
      return;
    }
    // A GIC-side value whose paired effect has a 95% interval excluding zero is marked; its title says by how much.
    const metric = (cls: string, text: string, which?: 'acc' | 'asr' | 'der') => {
      const e = which ? c.effect?.[which] : undefined;
      const td = el('td', `num ${cls}${e?.significant ? ' significant' : ''}`, e?.significant ? `${text} *` : text);
      if (e) td.title = e.text;
      return td;
    };
    tr.append(metric('', c.acc, 'acc'), metric(c.good ? 'good' : '', c.asr, 'asr'), metric('', c.ra), metric('', c.der, 'der'));
    const mt = el('td', 'model');
    if (c.runs !== undefined) {
      mt.append(el('span', 'muted', `${c.runs} run${c.runs === 1 ? '' : 's'}`));
      if (c.note) {
        const n = el('span', 'error', ' (some failed)');
        n.title = c.note;
        mt.append(n);
      }
    } else if (c.output) {
      const out = c.output;
      if (this.interactive) mt.append(link('open', () => this.actions.openModel(out), out));
      else mt.append(el('span', 'path', out));
    }
    tr.append(mt);
  }

  /**
   * The saved GIC network and calibrated set. In report.html (next to them in the output folder) they are
   * relative links; in the panel, where a relative URL would resolve inside the webview, their paths.
   */
  private gicFiles(files: GicFileLink[]): HTMLElement {
    const p = el('p', 'gic-files', 'GIC files: ');
    files.forEach((f, i) => {
      if (i > 0) p.append(document.createTextNode(', '));
      p.append(document.createTextNode(`${f.kind} `));
      if (this.interactive) p.append(el('span', 'path', f.path));
      else {
        const a = el('a', 'path', f.path);
        a.setAttribute('href', f.href);
        p.append(a);
      }
    });
    return p;
  }

  private renderGrid(s: ViewState): void {
    const g = buildGrid(s);
    const body = this.grid.body;
    body.replaceChildren();
    if (!g.baseline && g.groups.length === 0) {
      body.append(el('p', 'muted', s.status === 'running' || s.status === 'waiting' ? 'Results appear here as each cell finishes.' : 'No results.'));
      return;
    }
    if (g.baseline) {
      const p = el('p', 'baseline');
      p.append(el('strong', undefined, 'Baseline (no defense): '), document.createTextNode(`ACC ${g.baseline.acc} · ASR ${g.baseline.asr} · RA ${g.baseline.ra}`));
      body.append(p);
    }
    const sides: ('off' | 'on')[] = [];
    if (g.showOff) sides.push('off');
    if (g.showOn) sides.push('on');
    const running = s.status === 'running';
    for (const grp of g.groups) {
      const box = el('div', 'aux-group');
      const h = el('h3');
      h.append(document.createTextNode(grp.aux), el('span', 'aux-type', grp.auxType ? ` ${grp.auxType}` : ''));
      box.append(h);
      const typeNote = AUX_TYPE_NOTES[grp.auxType];
      if (typeNote) box.append(el('p', 'aux-note muted', typeNote));
      if (grp.gicNote) box.append(el('p', 'gic-note', grp.gicNote));
      if (grp.gicFiles) box.append(this.gicFiles(grp.gicFiles));
      const table = el('table', 'grid');
      // The table's accessible name; the header cells name every column (and the GIC side above them).
      table.append(el('caption', 'visually-hidden', `Aux set ${grp.aux}: ACC, ASR, RA and DER per defense${sides.length > 1 ? ', without and with GIC' : ''}`));
      const thead = el('thead');
      const r1 = el('tr');
      r1.append(el('td'));
      for (const side of sides) {
        const th = el('th', 'side', side === 'off' ? 'without GIC' : 'with GIC');
        th.colSpan = 5;
        th.scope = 'colgroup';
        r1.append(th);
      }
      const r2 = el('tr');
      const colHead = (cls: string | undefined, text: string) => {
        const th = el('th', cls, text);
        th.scope = 'col';
        return th;
      };
      r2.append(colHead(undefined, 'defense'));
      for (let i = 0; i < sides.length; i++) for (const k of ['ACC', 'ASR', 'RA', 'DER', 'model']) r2.append(colHead(k === 'model' ? '' : 'num', k));
      thead.append(r1, r2);
      const tbody = el('tbody');
      if (s.baseline) {
        const tr = el('tr', 'baseline-row');
        tr.append(el('td', undefined, 'none (baseline)'));
        for (let i = 0; i < sides.length; i++) {
          tr.append(el('td', 'num', pct(s.baseline.acc)), el('td', 'num', pct(s.baseline.asr)), el('td', 'num', pct(s.baseline.ra)), el('td', 'num', '—'), el('td'));
        }
        tbody.append(tr);
      }
      for (const line of grp.lines) {
        const tr = el('tr');
        tr.append(el('td', 'defense', line.defense));
        for (const side of sides) this.metricCells(tr, line[side], running);
        tbody.append(tr);
      }
      table.append(thead, tbody);
      box.append(table);
      body.append(box);
    }
    if (g.groups.some((grp) => grp.lines.some((l) => l.on?.effect))) {
      body.append(el('p', 'muted', 'Several seeds: mean ± standard deviation over the runs. * GIC on minus off, paired by seed (same auxiliary sample and random stream), has a 95% t-interval that excludes zero; hover a value for the interval.'));
    }
  }

  private renderCharts(s: ViewState): void {
    // chart.js needs a canvas in the document; it is created once in build().
    if (!this.charts) this.charts = new Charts();
    const hasBars = Boolean(s.baseline) || s.rows.length > 0;
    this.chart.root.hidden = !hasBars;
    if (hasBars) {
      const runs = this.charts.renderBar(this.chartCanvas, s);
      this.chartCanvas.setAttribute('aria-label', figureChartLabel(figureSeries(s)));
      this.chartNote.textContent = runs > 1 ? `Bars: mean over ${runs} seeds; error bars: ± one standard deviation.` : '';
    }

    this.embed.root.hidden = s.embeddings.length === 0;
    const names = new Set(s.embeddings.map((e) => e.aux));
    for (const [k, slot] of this.embedSlots) {
      if (!names.has(k)) {
        slot.wrap.remove();
        this.embedSlots.delete(k);
      }
    }
    this.charts.keepOnly(names);
    for (const e of s.embeddings) {
      let slot = this.embedSlots.get(e.aux);
      if (!slot) {
        const wrap = el('div', 'embedding');
        wrap.append(el('h3', undefined, `${e.aux} (${e.method})`));
        const box = el('div', 'scatter-box');
        const canvas = el('canvas');
        box.append(canvas);
        const legend = el('div', 'class-legend');
        wrap.append(box, legend);
        this.embed.body.append(wrap);
        slot = { wrap, canvas, legend };
        this.embedSlots.set(e.aux, slot);
      }
      const classes = this.charts.renderScatter(slot.canvas, e);
      slot.canvas.setAttribute('role', 'img');
      slot.canvas.setAttribute('aria-label', scatterLabel(e));
      slot.legend.replaceChildren(el('span', 'muted', 'classes: '));
      for (const c of classes) {
        const item = el('span', 'legend-item');
        const sw = el('span', 'swatch');
        sw.style.backgroundColor = classColour(c);
        item.append(sw, document.createTextNode(String(c)));
        slot.legend.append(item);
      }
    }
  }

  /** Per calibrated aux set: a few x, g(x) and |g(x) - x| / delta, drawn pixel for pixel and scaled up by CSS. */
  private renderGallery(s: ViewState): void {
    // One gallery per aux set (the first seed's calibration when the job repeats).
    const entries = s.gic.filter((g, i) => g.samples && g.samples.length > 0 && s.gic.findIndex((x) => x.aux === g.aux) === i);
    this.gallery.root.hidden = entries.length === 0;
    // Redraw only when the set of calibrated aux sets changed: live events repeat the same entries.
    const key = entries.map((g) => `${g.aux}:${g.samples!.length}`).join('|');
    if (key === this.galleryShown) return;
    this.galleryShown = key;
    const body = this.gallery.body;
    body.replaceChildren();
    for (const g of entries) {
      const wrap = el('div', 'gallery');
      const bound = g.norm === 'inf' ? `L∞ ≤ ${g.delta}` : `L2 ≤ ${g.delta}`;
      wrap.append(el('h3', undefined, `${g.aux} (${bound})`));
      const table = el('table', 'gallery-table');
      const head = el('tr');
      head.append(el('th'));
      for (const sample of g.samples!) head.append(el('th', 'num', `class ${sample.label}`));
      table.append(head);
      for (const [which, title] of [['x', 'x'], ['gx', 'g(x)'], ['diff', '|g(x) − x| / δ']] as const) {
        const tr = el('tr');
        tr.append(el('th', undefined, title));
        for (const sample of g.samples!) {
          tr.append(galleryCell(sample, which, title, g.aux));
        }
        table.append(tr);
      }
      wrap.append(table);
      body.append(wrap);
    }
  }

  private detectionCanvas = el('canvas');
  private detectionShown = '';

  /** Draws 8-bit pixels (base64, [H, W, C]) on a canvas scaled up by CSS; undefined when they are malformed. */
  private pixels(label: number, shape: [number, number, number], data: string, name: string): HTMLCanvasElement | undefined {
    const img = galleryImage({ label, shape, x: data, gx: data, diff: data }, 'x');
    if (!img) return undefined;
    const canvas = el('canvas', 'gallery-image');
    canvas.width = img.width;
    canvas.height = img.height;
    canvas.setAttribute('role', 'img');
    canvas.setAttribute('aria-label', name);
    canvas.getContext('2d')?.putImageData(new ImageData(img.rgba, img.width, img.height), 0, 0);
    return canvas;
  }

  /**
   * Neural Cleanse: the anomaly index per class as bars (flagged classes in the alarm colour, the threshold as a
   * dashed line) and every class's reversed trigger, mask x pattern and mask, flagged classes first and marked.
   */
  private renderDetection(s: ViewState): void {
    const nc = s.detection?.nc;
    this.detection.root.hidden = !nc;
    if (!nc) return;
    const key = JSON.stringify([nc.anomalyIndex, nc.flagged, (nc.triggers ?? []).map((t) => [t.label, t.maskL1]), s.attack?.note]);
    if (key === this.detectionShown && this.detection.body.childElementCount > 0) return;
    this.detectionShown = key;
    const body = this.detection.body;
    body.replaceChildren();
    const flagged = nc.flagged.length ? `flagged target class${nc.flagged.length > 1 ? 'es' : ''}: ${nc.flagged.join(', ')}` : 'no class flagged';
    if (s.attack?.note) body.append(el('p', 'muted', s.attack.note));
    body.append(el('p', undefined, `Anomaly index per class (a class whose reversed-trigger mask is unusually small, with an index above ${ANOMALY_THRESHOLD}, is flagged; a large index from an unusually large mask is not): ${nc.anomalyIndex.map((x) => x.toFixed(2)).join(', ')} — ${flagged}`));
    if (!this.charts) this.charts = new Charts();
    const series = anomalySeries(nc);
    const box = el('div', 'chart-box anomaly-chart');
    box.append(this.detectionCanvas);
    body.append(box);
    this.detectionCanvas.setAttribute('role', 'img');
    this.detectionCanvas.setAttribute('aria-label', anomalyChartLabel(nc));
    const alarm = this.charts.colour('asr');
    const calm = this.charts.colour('muted');
    this.charts.renderSimpleBars('nc-anomaly', this.detectionCanvas, {
      labels: series.labels,
      values: series.values,
      colours: series.flagged.map((f) => (f ? alarm : calm)),
      seriesLabel: 'anomaly index',
      yTitle: 'anomaly index',
      line: { value: ANOMALY_THRESHOLD, label: `threshold ${ANOMALY_THRESHOLD}` },
    });
    const cards = triggerCards(nc);
    if (!cards.length) return;
    body.append(el('h3', undefined, 'Reversed triggers (mask × pattern, and the mask)'));
    const list = el('div', 'trigger-list');
    for (const c of cards) {
      const t = c.trigger;
      const fig = el('figure', `reversed-trigger${c.flagged ? ' flagged' : ''}`);
      const pair = el('div', 'trigger-pair');
      const image = this.pixels(t.label, t.shape, t.image, c.alt);
      const mask = this.pixels(t.label, [t.shape[0], t.shape[1], 1], t.mask, `Mask of the reversed trigger of class ${t.label}`);
      if (image) pair.append(image);
      if (mask) pair.append(mask);
      fig.append(pair);
      const cap = el('figcaption', undefined, c.caption);
      if (t.file) {
        cap.append(document.createTextNode(' — '));
        if (this.interactive) cap.append(el('span', 'path', t.file));
        else {
          const href = relativeHref(t.file);
          const a = el('a', 'path', t.file);
          if (href) a.setAttribute('href', href);
          cap.append(a);
        }
      }
      fig.append(cap);
      list.append(fig);
    }
    body.append(list);
  }

  showInspect(file: string, info?: InspectInfo, error?: string): void {
    const r = this.root;
    r.replaceChildren();
    const h = el('header', 'header');
    h.append(el('h1', undefined, file.split(/[\\/]/).pop() ?? file), el('div', 'muted path', file));
    const bar = el('div', 'toolbar');
    bar.append(
      button('Purify Model…', () => this.actions.action('purify'), 'primary'),
      button('Evaluate Model', () => this.actions.action('evaluate')),
      button('Calibrate Auxiliary Data (GIC)…', () => this.actions.action('calibrate')),
    );
    h.append(bar);
    r.append(h, divider());
    if (error) {
      r.append(el('p', 'error', error));
      return;
    }
    if (!info) {
      const p = el('div', 'status-line');
      p.append(progressRing(), el('span', undefined, 'Reading the model…'));
      r.append(p);
      return;
    }
    const facts = el('table', 'facts-table');
    facts.append(el('caption', 'visually-hidden', 'Model facts'));
    let layers: unknown[] | undefined;
    for (const [k, v] of Object.entries(info)) {
      if (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'object' && x !== null)) {
        if (k === 'layers' || !layers) layers = v;
        continue;
      }
      const tr = el('tr');
      const th = el('th', undefined, k);
      th.scope = 'row';
      tr.append(th, el('td', undefined, formatValue(v, k)));
      facts.append(tr);
    }
    r.append(facts);
    if (layers) {
      r.append(el('h2', undefined, `Layers (${layers.length})`));
      const keys: string[] = [];
      for (const row of layers.slice(0, 2000)) for (const k of Object.keys(row as object)) if (!keys.includes(k)) keys.push(k);
      const t = el('table', 'grid layers');
      t.append(el('caption', 'visually-hidden', `Layers of ${file.split(/[\\/]/).pop() ?? file}`));
      const hr = el('tr');
      for (const k of keys) {
        const th = el('th', undefined, k);
        th.scope = 'col';
        hr.append(th);
      }
      const thead = el('thead');
      thead.append(hr);
      const tbody = el('tbody');
      for (const row of layers.slice(0, 2000)) {
        const tr = el('tr');
        for (const k of keys) tr.append(el('td', undefined, formatValue((row as Record<string, unknown>)[k], k)));
        tbody.append(tr);
      }
      t.append(thead, tbody);
      r.append(t);
      if (layers.length > 2000) r.append(el('p', 'muted', `… and ${layers.length - 2000} more`));
    }
  }
}

function formatValue(v: unknown, key: string): string {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'number') return Number.isInteger(v) ? v.toLocaleString('en-US') : String(v);
  if (typeof v === 'string') return v;
  if (Array.isArray(v) && v.every((x) => typeof x !== 'object')) return v.join(/shape/i.test(key) ? ' × ' : ', ');
  return JSON.stringify(v);
}
