/**
 * Canvas charts with chart.js (no eval, so it runs under the panel's strict CSP): the ACC/ASR bar chart in the
 * style of the paper's Figure 1 (per aux set and defense, GIC off and on side by side, error bars over the
 * seeds) and one embedding scatter per auxiliary set. Chart instances are kept and updated in place so that
 * live events do not rebuild the canvases. The numbers come from format.ts; this module only draws.
 *
 * chart.js has no error bars of its own; the plugin below draws a whisker of ± the dataset's `errors` on each
 * bar, in the chart's own scale (axes, layout, legend and tooltips stay chart.js's). The maintained plugin for
 * this, chartjs-chart-error-bars, brings its own controllers; ours is the one draw hook we need.
 */
import { BarController, BarElement, CategoryScale, Chart, Legend, LinearScale, PointElement, ScatterController, Tooltip, type Plugin } from 'chart.js';
import type { EmbeddingEntry } from '../src/shared/results';
import { figureSeries, scatterSeries } from './format';
import type { ViewState } from './state';

Chart.register(BarController, BarElement, CategoryScale, LinearScale, PointElement, ScatterController, Legend, Tooltip);

/** Draws ± `errors[i]` (data units) around each bar of a dataset that carries them. */
const errorBars: Plugin<'bar'> = {
  id: 'baErrorBars',
  afterDatasetsDraw(chart) {
    const y = chart.scales.y;
    const ctx = chart.ctx;
    ctx.save();
    ctx.strokeStyle = themeColour('--ba-fg', '#616161');
    ctx.lineWidth = 1.2;
    chart.data.datasets.forEach((ds, di) => {
      const errors = (ds as { errors?: (number | null)[] }).errors;
      const meta = chart.getDatasetMeta(di);
      if (!errors || meta.hidden) return;
      meta.data.forEach((bar, i) => {
        const v = ds.data[i];
        const e = errors[i];
        if (typeof v !== 'number' || typeof e !== 'number' || e <= 0) return;
        const x = bar.x;
        const top = y.getPixelForValue(v + e);
        const bottom = y.getPixelForValue(Math.max(0, v - e));
        const cap = Math.min(6, ((bar as unknown as { width?: number }).width ?? 8) / 3);
        ctx.beginPath();
        ctx.moveTo(x, top);
        ctx.lineTo(x, bottom);
        ctx.moveTo(x - cap, top);
        ctx.lineTo(x + cap, top);
        ctx.moveTo(x - cap, bottom);
        ctx.lineTo(x + cap, bottom);
        ctx.stroke();
      });
    });
    ctx.restore();
  },
};

/** A colour at an alpha, from `#rrggbb` (theme colours are hex in panel.css); other forms are used as they are. */
function withAlpha(colour: string, alpha: number): string {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(colour.trim());
  return m ? `rgba(${parseInt(m[1], 16)}, ${parseInt(m[2], 16)}, ${parseInt(m[3], 16)}, ${alpha})` : colour;
}

/** A theme colour from the --vscode-* variables, through the CSS custom properties panel.css defines. */
function themeColour(name: string, fallback: string): string {
  const v = getComputedStyle(document.body).getPropertyValue(name).trim();
  return v || fallback;
}

function applyTheme(): void {
  Chart.defaults.color = themeColour('--ba-fg', '#616161');
  Chart.defaults.borderColor = themeColour('--ba-grid', 'rgba(128,128,128,0.25)');
  Chart.defaults.font.family = themeColour('--ba-font', 'sans-serif');
  // Charts update on every live event; animation would make them flicker.
  Chart.defaults.animation = false;
}

/** A plain bar chart: one value per label, each bar its own colour (model diff per layer, NC's anomaly index). */
export interface SimpleBars {
  labels: string[];
  values: number[];
  colours: string[];
  seriesLabel: string;
  yTitle: string;
  /** A horizontal reference line (NC's anomaly threshold), drawn with its label. */
  line?: { value: number; label: string };
}

/** The reference line of each SimpleBars chart (kept beside the chart, not in chart.js's typed options). */
const referenceLines = new WeakMap<object, NonNullable<SimpleBars['line']>>();

/** Draws the reference line of a SimpleBars chart. */
const referenceLine: Plugin<'bar'> = {
  id: 'baReferenceLine',
  afterDatasetsDraw(chart) {
    const line = referenceLines.get(chart);
    if (!line) return;
    const y = chart.scales.y.getPixelForValue(line.value);
    const { left, right } = chart.chartArea;
    const ctx = chart.ctx;
    ctx.save();
    ctx.strokeStyle = themeColour('--ba-fg', '#616161');
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(left, y);
    ctx.lineTo(right, y);
    ctx.stroke();
    ctx.fillStyle = themeColour('--ba-fg', '#616161');
    ctx.fillText(line.label, left + 4, y - 4);
    ctx.restore();
  },
};

export class Charts {
  private bar?: Chart<'bar'>;
  private scatters = new Map<string, Chart<'scatter'>>();
  private simple = new Map<string, Chart<'bar'>>();

  /** Theme colours by role, for charts whose colours format code picks per bar. */
  colour(role: 'acc' | 'asr' | 'muted'): string {
    if (role === 'acc') return themeColour('--ba-acc', '#3794ff');
    if (role === 'asr') return themeColour('--ba-asr', '#f14c4c');
    return themeColour('--ba-muted', '#6b6b6b');
  }

  /** A SimpleBars chart on `canvas`, kept under `id` and updated in place. */
  renderSimpleBars(id: string, canvas: HTMLCanvasElement, d: SimpleBars): void {
    let chart = this.simple.get(id);
    if (chart && chart.canvas !== canvas) {
      chart.destroy();
      chart = undefined;
    }
    if (!chart) {
      chart = new Chart(canvas, {
        type: 'bar',
        data: { labels: [], datasets: [] },
        options: {
          responsive: true,
          maintainAspectRatio: false,
          scales: { y: { beginAtZero: true, title: { display: true, text: d.yTitle } }, x: { ticks: { autoSkip: false, maxRotation: 70 } } },
          plugins: { legend: { display: false } },
        },
        plugins: [referenceLine],
      });
      this.simple.set(id, chart);
    }
    if (d.line) referenceLines.set(chart, d.line);
    else referenceLines.delete(chart);
    chart.data.labels = d.labels;
    chart.data.datasets = [{ label: d.seriesLabel, data: d.values, backgroundColor: d.colours, borderColor: d.colours, borderWidth: 1 }];
    chart.update();
  }

  constructor() {
    applyTheme();
  }

  /** Re-reads the theme (VS Code changes the body's class and variables when the user switches theme). */
  retheme(): void {
    applyTheme();
    this.bar?.destroy();
    this.bar = undefined;
    for (const c of this.scatters.values()) c.destroy();
    this.scatters.clear();
    for (const c of this.simple.values()) c.destroy();
    this.simple.clear();
  }

  /** The Figure-1 chart; returns the most seeds behind one bar (error bars need two). */
  renderBar(canvas: HTMLCanvasElement, s: ViewState): number {
    const d = figureSeries(s);
    const acc = themeColour('--ba-acc', '#3794ff');
    const asr = themeColour('--ba-asr', '#f14c4c');
    if (this.bar && this.bar.canvas !== canvas) {
      this.bar.destroy();
      this.bar = undefined;
    }
    if (!this.bar) {
      this.bar = new Chart(canvas, {
        type: 'bar',
        data: { labels: [], datasets: [] },
        options: {
          responsive: true,
          maintainAspectRatio: false,
          scales: { y: { min: 0, max: 100, title: { display: true, text: '%' } }, x: { ticks: { autoSkip: false, maxRotation: 60 } } },
          plugins: {
            legend: { position: 'top' },
            tooltip: {
              callbacks: {
                label: (c) => {
                  const e = (c.dataset as { errors?: (number | null)[] }).errors?.[c.dataIndex];
                  return `${c.dataset.label}: ${c.parsed.y ?? '—'}%${typeof e === 'number' ? ` ± ${e}` : ''}`;
                },
              },
            },
          },
        },
        plugins: [errorBars],
      });
    }
    this.bar.data.labels = d.labels;
    // GIC off: the metric's colour, lighter; GIC on: solid, so each pair reads as one metric before and after.
    this.bar.data.datasets = d.datasets.map((x) => {
      const base = x.metric === 'acc' ? acc : asr;
      const colour = x.gic ? base : withAlpha(base, 0.45);
      return { label: x.label, data: x.values, errors: x.errors, backgroundColor: colour, borderColor: base, borderWidth: x.gic ? 0 : 1 } as never;
    });
    this.bar.update();
    return d.runs;
  }

  renderScatter(canvas: HTMLCanvasElement, e: EmbeddingEntry): number[] {
    const { series, classes } = scatterSeries(e);
    let chart = this.scatters.get(e.aux);
    if (chart && chart.canvas !== canvas) {
      chart.destroy();
      chart = undefined;
    }
    if (!chart) {
      chart = new Chart(canvas, {
        type: 'scatter',
        data: { datasets: [] },
        options: {
          responsive: true,
          maintainAspectRatio: false,
          scales: { x: { ticks: { display: false } }, y: { ticks: { display: false } } },
          plugins: {
            legend: {
              position: 'top',
              labels: {
                usePointStyle: true,
                // Points are coloured by class; the legend shows each set's shape in the text colour instead.
                generateLabels: (c) =>
                  c.data.datasets.map((d, i) => ({
                    text: String(d.label ?? ''),
                    fillStyle: 'transparent',
                    strokeStyle: themeColour('--ba-fg', '#616161'),
                    fontColor: themeColour('--ba-fg', '#616161'),
                    lineWidth: 1.5,
                    pointStyle: (d as { pointStyle?: 'circle' }).pointStyle ?? 'circle',
                    hidden: !c.isDatasetVisible(i),
                    datasetIndex: i,
                  })),
              },
            },
          },
        },
      });
      this.scatters.set(e.aux, chart);
    }
    const fg = themeColour('--ba-fg', '#616161');
    chart.data.datasets = series.map((s) => ({
      label: s.label,
      data: s.points,
      pointStyle: s.pointStyle as 'circle',
      pointRadius: s.radius,
      pointBackgroundColor: s.colours,
      pointBorderColor: s.set === 'calibrated' ? fg : s.colours,
      pointBorderWidth: s.set === 'calibrated' ? 0.5 : 0,
      // The legend swatch of a set shows its shape, not one class's colour.
      backgroundColor: fg,
      borderColor: fg,
    }));
    chart.update();
    return classes;
  }

  /** Drops the scatters of sets no longer shown (a different run loaded into the panel). */
  keepOnly(auxNames: Set<string>): void {
    for (const [k, c] of this.scatters) {
      if (!auxNames.has(k)) {
        c.destroy();
        this.scatters.delete(k);
      }
    }
  }
}
