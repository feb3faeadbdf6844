/**
 * Turning a ViewState into what the panel shows: the ACC/ASR/RA/DER grid per auxiliary set x defense with GIC
 * off and on side by side (mean ± std over the seeds when a job repeats, the GIC side marked where the paired
 * GIC effect's 95% interval excludes zero), the Figure-1-style bar series with error bars, and the embedding
 * scatter series. Pure (no DOM, no chart library) so that the numbers on screen are unit tested; render.ts and
 * charts.ts only draw these. Means and intervals are folded from the rows as they arrive (summary.ts, the
 * runner's own code), so a live run and its results.json show the same numbers.
 */
import type { EmbeddingEntry, GicEffectEntry, GicEntry, GicSample, Interval, ResultRow, Spread, SummaryEntry } from '../src/shared/results';
import { excludesZero, gicEffectOfRows, summarizeRows } from '../src/shared/summary';
import type { ViewState } from './state';

/** null means "cannot be measured" (no trigger known; RA without true labels): "n/a", never 0 or a gap. */
export function pct(x: number | null | undefined, digits = 1): string {
  if (x === null) return 'n/a';
  return typeof x === 'number' && Number.isFinite(x) ? `${(x * 100).toFixed(digits)}%` : '—';
}

export function num(x: number | null | undefined, digits = 3): string {
  return typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : '—';
}

export interface GridCell {
  acc: string;
  asr: string;
  ra: string;
  der: string;
  /** Purified model, relative to the run's output folder (one run; with several seeds there is one per seed). */
  output?: string;
  /** Runs folded into this cell (seeds that succeeded), when the job repeats. */
  runs?: number;
  /** Runs of a repeated cell that failed, as one line. */
  note?: string;
  error?: string;
  /** ASR went down and ACC stayed within 5 points: what a user scans the grid for. */
  good: boolean;
  /**
   * On the GIC side of a repeated job: per metric, the paired GIC effect (on - off) as text, and whether its
   * 95% interval excludes zero (then the value is marked).
   */
  effect?: Partial<Record<'acc' | 'asr' | 'der', { text: string; significant: boolean }>>;
}

export interface GridLine {
  defense: string;
  off?: GridCell;
  on?: GridCell;
}

export interface GridGroup {
  aux: string;
  auxType: string;
  lines: GridLine[];
  /** GIC facts for this set, one line of text (bound, perturbation, confidence), when it was calibrated. */
  gicNote?: string;
  /** The saved GIC network and calibrated set, relative to the run's output folder (unsafe paths left out). */
  gicFiles?: GicFileLink[];
}

export interface GicFileLink {
  /** What the file is: `network` (g, safetensors) or `calibrated set` (npz). */
  kind: string;
  /** The path as results.json gives it. */
  path: string;
  /** A relative URL to it: every segment percent-encoded, so no scheme, host or query can come from a name. */
  href: string;
}

/**
 * A relative URL for a file inside the output folder, or undefined when the path is not one: absolute paths
 * (`/x`, `C:\x`, `\\host\x`), `..` or `.` segments, empty segments, backslashes and control characters
 * are refused. Each segment is percent-encoded, so `javascript:x` becomes the relative `javascript%3Ax`.
 */
export function relativeHref(p: string): string | undefined {
  if (typeof p !== 'string' || p.length === 0 || p.length > 1024) return undefined;
  if (/[\\\u0000-\u001f\u007f]/.test(p) || /^[a-zA-Z]:/.test(p)) return undefined;
  const parts = p.split('/');
  if (parts.some((s) => s === '' || s === '.' || s === '..')) return undefined;
  return parts.map(encodeURIComponent).join('/');
}

export interface GridModel {
  baseline?: { acc: string; asr: string; ra: string };
  /** Whether any row was run with GIC: the "GIC on" columns are shown only then. */
  showOn: boolean;
  showOff: boolean;
  groups: GridGroup[];
}

function cell(r: ResultRow, baselineAcc: number | undefined): GridCell {
  const good =
    !r.error &&
    typeof r.asr === 'number' &&
    typeof r.acc === 'number' &&
    r.asr < 0.2 &&
    (baselineAcc === undefined || baselineAcc - r.acc <= 0.05);
  return {
    acc: r.error ? '—' : pct(r.acc),
    asr: r.error ? '—' : pct(r.asr),
    ra: r.error ? '—' : pct(r.ra),
    der: r.error ? '—' : pct(r.der),
    output: r.output ?? undefined,
    error: r.error ?? undefined,
    good,
  };
}

/** Mean ± sample std in percent (the mean alone for one run). */
export function pctSpread(x: Spread | null | undefined): string {
  if (!x) return '—';
  return x.std === null ? pct(x.mean) : `${pct(x.mean)} ± ${(x.std * 100).toFixed(1)}`;
}

/** A paired difference in percentage points with its 95% interval. */
export function effectText(i: Interval): string {
  const signed = (v: number) => `${v >= 0 ? '+' : '−'}${Math.abs(v * 100).toFixed(1)}`;
  return i.lo === null || i.hi === null ? `${signed(i.mean)} points` : `${signed(i.mean)} points, 95% CI [${signed(i.lo)}, ${signed(i.hi)}]`;
}

/** A grid cell from several runs of one (aux, defense, GIC): means ± std, or the first error when all failed. */
function summaryCell(e: SummaryEntry, rows: ResultRow[], baselineAcc: number | undefined, effect: GicEffectEntry | undefined): GridCell {
  if (e.n === 0) return { acc: '—', asr: '—', ra: '—', der: '—', error: rows.find((r) => r.error)?.error ?? 'failed', good: false, runs: 0 };
  const ok = rows.filter((r) => !r.error);
  const ras = ok.map((r) => r.ra).filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
  const ra = ras.length === ok.length ? { mean: ras.reduce((a, b) => a + b, 0) / ras.length, std: null } : null;
  const good = !!e.asr && !!e.acc && e.asr.mean < 0.2 && (baselineAcc === undefined || baselineAcc - e.acc.mean <= 0.05);
  const failed = rows.length - ok.length;
  const out: GridCell = {
    acc: pctSpread(e.acc),
    asr: pctSpread(e.asr),
    // RA is shown as a mean only: the summary keeps the spread of ACC, ASR and DER.
    ra: ra ? pct(ra.mean) : '—',
    der: pctSpread(e.der),
    runs: e.n,
    good,
    // The means stand on the runs that succeeded; the failures are named beside them.
    note: failed ? `${failed} of ${rows.length} runs failed: ${rows.find((r) => r.error)!.error}` : undefined,
  };
  if (effect) {
    out.effect = {};
    for (const m of ['acc', 'asr', 'der'] as const) {
      const i = effect[m];
      if (i) out.effect[m] = { text: `GIC effect over ${effect.n} paired seed${effect.n === 1 ? '' : 's'}: ${effectText(i)}`, significant: excludesZero(i) };
    }
  }
  return out;
}

/** What the synthetic auxiliary type is, for the panel: not data the user has, and optimised much like GIC. */
export const AUX_TYPE_NOTES: Record<string, string> = {
  synthetic: 'model inversion: images optimised for the victim’s confidence and BatchNorm statistics, an objective close to GIC’s',
};

export function buildGrid(s: ViewState): GridModel {
  const groups: GridGroup[] = [];
  const byAux = new Map<string, GridGroup>();
  const group = (aux: string, auxType: string) => {
    let g = byAux.get(aux);
    if (!g) {
      g = { aux, auxType, lines: [] };
      byAux.set(aux, g);
      groups.push(g);
    }
    return g;
  };
  const repeated = new Set(s.rows.map((r) => r.seed)).size > 1;
  if (repeated) {
    const effects = gicEffectOfRows(s.rows);
    for (const e of summarizeRows(s.rows)) {
      const r0 = s.rows.find((r) => r.aux === e.aux && r.defense === e.defense && r.gic === e.gic)!;
      const g = group(e.aux, r0.auxType);
      let line = g.lines.find((l) => l.defense === e.defense);
      if (!line) {
        line = { defense: e.defense };
        g.lines.push(line);
      }
      const rows = s.rows.filter((r) => r.aux === e.aux && r.defense === e.defense && r.gic === e.gic);
      const effect = e.gic ? effects.find((x) => x.aux === e.aux && x.defense === e.defense) : undefined;
      line[e.gic ? 'on' : 'off'] = summaryCell(e, rows, s.baseline?.acc, effect);
    }
  } else {
    for (const r of s.rows) {
      const g = group(r.aux, r.auxType);
      let line = g.lines.find((l) => l.defense === r.defense);
      if (!line) {
        line = { defense: r.defense };
        g.lines.push(line);
      }
      line[r.gic ? 'on' : 'off'] = cell(r, s.baseline?.acc);
    }
  }
  // One GIC line per aux set: its first calibration (the first seed's), with the count when there are more.
  const firstGic = new Map<string, { entry: GicEntry; count: number }>();
  for (const e of s.gic) {
    const f = firstGic.get(e.aux);
    if (f) f.count++;
    else firstGic.set(e.aux, { entry: e, count: 1 });
  }
  for (const { entry: e, count } of firstGic.values()) {
    let g = byAux.get(e.aux);
    if (!g) {
      // Calibration finished before any defense on this set: show the set already.
      g = { aux: e.aux, auxType: '', lines: [] };
      byAux.set(e.aux, g);
      groups.push(g);
    }
    const bn = e.bnDistanceBefore !== null && e.bnDistanceAfter !== null ? `, BN distance ${num(e.bnDistanceBefore, 2)} → ${num(e.bnDistanceAfter, 2)}` : '';
    const files: GicFileLink[] = [];
    for (const [kind, p] of [['network', e.files?.net], ['calibrated set', e.files?.images]] as const) {
      const href = typeof p === 'string' ? relativeHref(p) : undefined;
      if (p && href) files.push({ kind, path: p, href });
    }
    g.gicFiles = files.length ? files : undefined;
    const objective = e.objective ? `; objective CE${e.objective.bn ? ` + ${e.objective.bn.weight} × BN statistics (${e.objective.bn.layers} layers)` : ' only'}` : '';
    const seeds = count > 1 ? ` (seed ${e.seed}; ${count} calibrations, one per seed)` : '';
    g.gicNote = `GIC: ‖g(x) − x‖${e.norm === 'inf' ? '∞' : '₂'} ≤ ${e.delta} (max ${num(e.maxPerturbation)}, mean ${num(e.meanPerturbation)}), confidence ${pct(e.confidenceBefore)} → ${pct(e.confidenceAfter)}${bn}${objective}${seeds}`;
  }
  const b = s.baseline;
  return {
    baseline: b ? { acc: pct(b.acc), asr: pct(b.asr), ra: pct(b.ra) } : undefined,
    showOn: s.rows.some((r) => r.gic),
    showOff: s.rows.some((r) => !r.gic) || !s.rows.some((r) => r.gic),
    groups,
  };
}

export interface FigureDataset {
  metric: 'acc' | 'asr';
  gic: boolean;
  label: string;
  /** Percent per label; null where there is no value (failed, or not run). */
  values: (number | null)[];
  /** One standard deviation over the seeds, in percent; null with one run. */
  errors: (number | null)[];
}

export interface FigureSeries {
  labels: string[];
  datasets: FigureDataset[];
  /** Seeds per bar at most (error bars need at least two). */
  runs: number;
}

/**
 * The paper's Figure 1: per auxiliary set (its type named) and defense, ACC and ASR with GIC off and on side by
 * side, bars at the mean over the seeds with ± one standard deviation as error bars; the baseline first.
 */
export function figureSeries(s: ViewState): FigureSeries {
  const p = (x: number | null | undefined) => (typeof x === 'number' && Number.isFinite(x) ? Math.round(x * 1000) / 10 : null);
  const summary = summarizeRows(s.rows);
  const sides = [false, true].filter((g) => s.rows.some((r) => r.gic === g));
  const datasets: FigureDataset[] = [];
  for (const metric of ['acc', 'asr'] as const) {
    for (const gic of sides) datasets.push({ metric, gic, label: `${metric.toUpperCase()}, GIC ${gic ? 'on' : 'off'}`, values: [], errors: [] });
  }
  const labels: string[] = [];
  if (s.baseline) {
    labels.push('baseline');
    for (const d of datasets) {
      // The victim before purification: one bar per metric (on the GIC-off side when both are shown).
      d.values.push(d.gic && sides.length > 1 ? null : p(s.baseline[d.metric]));
      d.errors.push(null);
    }
  }
  const keys: Array<{ aux: string; defense: string; auxType: string }> = [];
  for (const r of s.rows) if (!keys.some((k) => k.aux === r.aux && k.defense === r.defense)) keys.push({ aux: r.aux, defense: r.defense, auxType: r.auxType });
  for (const k of keys) {
    labels.push(`${k.aux} (${k.auxType}) · ${k.defense}`);
    for (const d of datasets) {
      const e = summary.find((x) => x.aux === k.aux && x.defense === k.defense && x.gic === d.gic);
      const v = e?.[d.metric];
      d.values.push(v ? p(v.mean) : null);
      d.errors.push(v && v.std !== null ? p(v.std) : null);
    }
  }
  return { labels, datasets, runs: Math.max(0, ...summary.map((e) => e.n)) };
}

/** Ten distinguishable hues (Tableau 10), by class index; colour-blind users also get shapes per set. */
export const CLASS_COLOURS = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac'];

export function classColour(label: number): string {
  const i = Number.isInteger(label) && label >= 0 ? label : 0;
  // Beyond ten classes, rotate the hue so that colours stay distinct enough for a glance.
  if (i < CLASS_COLOURS.length) return CLASS_COLOURS[i];
  return `hsl(${(i * 137.508) % 360}, 55%, 55%)`;
}

export const SET_STYLE: Record<string, { label: string; pointStyle: 'circle' | 'triangle' | 'rect' | 'crossRot'; radius: number }> = {
  reference: { label: 'reference (training data)', pointStyle: 'circle', radius: 2 },
  aux: { label: 'auxiliary (raw)', pointStyle: 'triangle', radius: 3 },
  calibrated: { label: 'calibrated g(x)', pointStyle: 'rect', radius: 3 },
};

export interface ScatterSeries {
  set: string;
  label: string;
  pointStyle: string;
  radius: number;
  points: { x: number; y: number }[];
  colours: string[];
}

/** One series per point set (reference, raw aux, calibrated) with a colour per point by class. */
export function scatterSeries(e: EmbeddingEntry): { series: ScatterSeries[]; classes: number[] } {
  const series: ScatterSeries[] = [];
  const classes = new Set<number>();
  for (const set of ['reference', 'aux', 'calibrated']) {
    const pts = e.points.filter((p) => p.set === set && Number.isFinite(p.x) && Number.isFinite(p.y));
    if (pts.length === 0) continue;
    const st = SET_STYLE[set];
    for (const p of pts) classes.add(p.label);
    series.push({
      set,
      label: st.label,
      pointStyle: st.pointStyle,
      radius: st.radius,
      points: pts.map((p) => ({ x: p.x, y: p.y })),
      colours: pts.map((p) => classColour(p.label)),
    });
  }
  return { series, classes: [...classes].sort((a, b) => a - b) };
}

/** The header's backend badge: the training backend (and the GPU WebGPU ran on), its threads, and what evaluates when that differs. */
export function backendText(b: NonNullable<ViewState['backend']>): string {
  const evaluation = b.evaluation && b.evaluation !== b.name ? ` + ${b.evaluation === 'onnxruntime-cpu' ? 'ONNX Runtime (evaluation)' : b.evaluation === 'onnxruntime-webgpu' ? 'ONNX Runtime on the GPU (WebGPU)' : `${b.evaluation} (evaluation)`}` : '';
  return `${b.name}${b.adapter ? ` on ${b.adapter}` : ''}${b.threads ? ` ×${b.threads}` : ''}${evaluation}`;
}

export function statusText(s: ViewState): string {
  switch (s.status) {
    case 'waiting':
      return 'Waiting for the job to start…';
    case 'running': {
      const p = s.progress;
      const cells = s.cells ? `${s.rows.length}/${s.cells} cells` : '';
      const stage = p ? `${p.stage} ${p.done}/${p.total}${p.message ? ` — ${p.message}` : ''}` : 'starting';
      return [cells, stage].filter(Boolean).join(' · ');
    }
    case 'done':
      return `Done: ${s.rows.length} cell${s.rows.length === 1 ? '' : 's'}${s.rows.some((r) => r.error) ? `, ${s.rows.filter((r) => r.error).length} failed` : ''}`;
    case 'failed':
      return `Failed: ${s.error ?? 'unknown error'}`;
    case 'cancelled':
      return 'Cancelled: nothing was written.';
    case 'interrupted':
      return 'Interrupted: the window was reloaded while the job ran; these are the results received before.';
  }
}

/** RGBA pixels of one gallery image, ready for ImageData. */
export interface GalleryImage {
  width: number;
  height: number;
  rgba: Uint8ClampedArray<ArrayBuffer>;
}

/**
 * Decodes one image of a GIC sample: `x` and `gx` as they look (grey or RGB), `diff` as the largest channel of
 * |g(x) - x| / delta in grey, white where the perturbation reaches the bound. Undefined if the data does not
 * have the size its shape says (results.json is data from disk, not trusted to be well formed).
 */
export function galleryImage(sample: GicSample, which: 'x' | 'gx' | 'diff'): GalleryImage | undefined {
  const [h, w, c] = sample.shape;
  if (![h, w, c].every((d) => Number.isInteger(d) && d > 0) || (c !== 1 && c !== 3) || h * w > 512 * 512) return undefined;
  let bytes: string;
  try {
    bytes = atob(sample[which]);
  } catch {
    return undefined;
  }
  if (bytes.length !== h * w * c) return undefined;
  const rgba = new Uint8ClampedArray(new ArrayBuffer(h * w * 4));
  for (let p = 0; p < h * w; p++) {
    let r: number, g: number, b: number;
    if (c === 1) r = g = b = bytes.charCodeAt(p);
    else if (which === 'diff') r = g = b = Math.max(bytes.charCodeAt(3 * p), bytes.charCodeAt(3 * p + 1), bytes.charCodeAt(3 * p + 2));
    else [r, g, b] = [bytes.charCodeAt(3 * p), bytes.charCodeAt(3 * p + 1), bytes.charCodeAt(3 * p + 2)];
    rgba.set([r, g, b, 255], 4 * p);
  }
  return { width: w, height: h, rgba };
}

/**
 * The Figure-1 chart's accessible name: what it plots and the values per bar group, so a screen reader user
 * gets the chart's content, not only its title (the grid above holds the same numbers as a table).
 */
export function figureChartLabel(f: FigureSeries): string {
  const v = (x: number | null | undefined) => (typeof x === 'number' ? `${x}%` : 'n/a');
  const groups = f.labels.map((label, i) => `${label}: ${f.datasets.map((d) => `${d.label} ${v(d.values[i])}`).join(', ')}`);
  const head = `Bar chart: ACC and ASR per aux set and defense${f.datasets.some((d) => d.gic) ? ', GIC off and on' : ''}${f.runs > 1 ? `, mean over ${f.runs} seeds` : ''}`;
  return `${head}. ${groups.join('; ')}.`;
}

/** A scatter's accessible name: the projection, and how many points of each set and class it shows. */
export function scatterLabel(e: EmbeddingEntry): string {
  const { series, classes } = scatterSeries(e);
  return `Scatter plot: ${e.method} of the model's features for aux set ${e.aux}: ${series.map((s) => `${s.points.length} ${s.label} points`).join(', ')}; colours are the ${classes.length} classes (${classes.join(', ')}).`;
}

/** The live region's text: changes only when the state or the count of finished cells does (no chatter). */
export function statusAnnouncement(s: ViewState): string {
  if (s.status === 'running') return `Running: ${s.rows.length}${s.cells ? ` of ${s.cells}` : ''} cells done.`;
  return statusText(s);
}
