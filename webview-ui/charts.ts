/**
 * Canvas charts with chart.js (no eval, so it runs under the panel's strict CSP): the ACC/ASR bar chart and
 * one embedding scatter per auxiliary set. Chart instances are kept and updated in place so that live events
 * do not rebuild the canvases. The numbers come from format.ts; this module only draws.
 */
import { BarController, BarElement, CategoryScale, Chart, Legend, LinearScale, PointElement, ScatterController, Tooltip } from 'chart.js';
import type { EmbeddingEntry } from '../src/engine/jobs/results';
import { barSeries, scatterSeries } from './format';
import type { ViewState } from './state';

Chart.register(BarController, BarElement, CategoryScale, LinearScale, PointElement, ScatterController, Legend, Tooltip);

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

export class Charts {
  private bar?: Chart<'bar'>;
  private scatters = new Map<string, Chart<'scatter'>>();

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
  }

  renderBar(canvas: HTMLCanvasElement, s: ViewState): void {
    const d = barSeries(s);
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
          plugins: { legend: { position: 'top' }, tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${c.parsed.y ?? '—'}%` } } },
        },
      });
    }
    this.bar.data.labels = d.labels;
    this.bar.data.datasets = [
      { label: 'ACC', data: d.acc, backgroundColor: acc },
      { label: 'ASR', data: d.asr, backgroundColor: asr },
    ];
    this.bar.update();
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
