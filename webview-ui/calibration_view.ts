/**
 * The calibration side view's DOM: for the run the host says the user looks at, one card per calibrated
 * auxiliary set (GIC's facts as a small table, the x / g(x) / |g(x) - x| gallery, the raw-vs-calibrated
 * embedding) and a button into the results panel. Narrow by design (a side bar): images and charts stack.
 */
import type { InspectInfo } from '../src/shared/panel_messages';
import type { View } from './app';
import { calibrationCards } from './calibration_format';
import { Charts } from './charts';
import { scatterLabel, statusAnnouncement, statusText } from './format';
import { el, galleryCell } from './dom';
import type { ViewState } from './state';

export class CalibrationDomView implements View {
  private charts?: Charts;
  private readonly announcer = el('div', 'visually-hidden');
  private readonly status = el('p', 'muted status-text');
  private readonly body = el('div', 'calibration-cards');
  private readonly title = el('h2');
  private shownKey = '';
  private built = false;

  constructor(
    private readonly root: HTMLElement,
    private readonly showPanel: () => void,
  ) {}

  private build(): void {
    if (this.built) return;
    this.built = true;
    document.body.classList.add('side-view');
    this.announcer.setAttribute('role', 'status');
    this.announcer.setAttribute('aria-live', 'polite');
    this.announcer.setAttribute('aria-atomic', 'true');
    const open = el('button', 'tool-button', 'Open in the results panel');
    open.type = 'button';
    open.addEventListener('click', () => this.showPanel());
    this.root.replaceChildren(this.title, this.announcer, this.status, open, this.body);
  }

  showResults(s: ViewState): void {
    this.build();
    this.title.textContent = s.run ? `GIC — ${s.run.title}` : 'GIC calibration';
    const said = statusAnnouncement(s);
    if (this.announcer.textContent !== said) this.announcer.textContent = said;
    this.status.textContent = s.run ? statusText(s) : 'Open a run, or start a job, to see its calibration here.';
    const cards = calibrationCards(s);
    // Live events repeat the same entries: redraw when a calibration or an embedding arrives.
    const key = JSON.stringify([s.run?.id, cards.map((c) => [c.aux, c.count, c.entry.seconds, c.embedding?.points.length ?? 0])]);
    if (key === this.shownKey) return;
    this.shownKey = key;
    if (!this.charts) this.charts = new Charts();
    this.charts.keepOnly(new Set(cards.filter((c) => c.embedding).map((c) => c.aux)));
    this.body.replaceChildren();
    if (!cards.length) {
      this.body.append(el('p', 'muted', s.status === 'running' || s.status === 'waiting' ? 'Calibrations appear here as GIC finishes each auxiliary set.' : 'This run calibrated no auxiliary set (GIC off).'));
      return;
    }
    for (const c of cards) {
      const card = el('section', 'calibration-card');
      card.append(el('h3', undefined, c.count > 1 ? `${c.aux} (seed ${c.entry.seed}; ${c.count} calibrations)` : c.aux));
      const t = el('table', 'facts-table');
      t.append(el('caption', 'visually-hidden', `GIC on aux set ${c.aux}`));
      for (const [k, v] of c.facts) {
        const tr = el('tr');
        const th = el('th', undefined, k);
        th.scope = 'row';
        tr.append(th, el('td', undefined, v));
        t.append(tr);
      }
      card.append(t);
      const samples = c.entry.samples ?? [];
      if (samples.length) {
        const g = el('table', 'gallery-table');
        g.append(el('caption', 'visually-hidden', `Calibrated examples of aux set ${c.aux}: x, g(x) and |g(x) − x| / δ per class`));
        const head = el('tr');
        head.append(el('td'));
        for (const [, title] of [['x', 'x'], ['gx', 'g(x)'], ['diff', '|g(x) − x| / δ']] as const) {
          const th = el('th', undefined, title);
          th.scope = 'col';
          head.append(th);
        }
        g.append(head);
        for (const sample of samples) {
          const tr = el('tr');
          const th = el('th', undefined, `class ${sample.label}`);
          th.scope = 'row';
          tr.append(th);
          for (const [which, title] of [['x', 'x'], ['gx', 'g(x)'], ['diff', '|g(x) − x| / δ']] as const) {
            tr.append(galleryCell(sample, which, title, c.aux));
          }
          g.append(tr);
        }
        card.append(g);
      }
      if (c.embedding) {
        card.append(el('h4', undefined, `Features: reference, raw and calibrated (${c.embedding.method})`));
        const box = el('div', 'scatter-box side-scatter');
        const canvas = el('canvas');
        canvas.setAttribute('role', 'img');
        canvas.setAttribute('aria-label', scatterLabel(c.embedding));
        box.append(canvas);
        card.append(box);
        this.charts.renderScatter(canvas, c.embedding);
      }
      this.body.append(card);
    }
  }

  showInspect(_file: string, _info?: InspectInfo, _error?: string): void {
    // The side view shows runs only.
  }
}
