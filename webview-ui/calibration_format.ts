/**
 * The calibration side view's numbers: per auxiliary set, GIC's bound and what it did to the data (perturbation,
 * the victim's confidence on the true label, the distance of the BatchNorm input statistics to the running ones,
 * before and after), as label/value pairs. Pure, so the shown values are unit tested.
 */
import type { EmbeddingEntry, GicEntry } from '../src/shared/results';
import { num, pct } from './format';
import type { ViewState } from './state';

export interface CalibrationCard {
  aux: string;
  entry: GicEntry;
  /** Calibrations of this aux set (one per seed); the card shows the first. */
  count: number;
  facts: Array<[string, string]>;
  embedding?: EmbeddingEntry;
}

export function calibrationFacts(e: GicEntry): Array<[string, string]> {
  const bn = e.bnDistanceBefore !== null && e.bnDistanceAfter !== null ? `${num(e.bnDistanceBefore, 2)} → ${num(e.bnDistanceAfter, 2)}` : 'n/a (no BatchNorm layers)';
  const facts: Array<[string, string]> = [
    ['bound', `‖g(x) − x‖${e.norm === 'inf' ? '∞' : '₂'} ≤ ${e.delta}`],
    ['max perturbation', num(e.maxPerturbation)],
    ['mean perturbation', num(e.meanPerturbation)],
    ['victim confidence', `${pct(e.confidenceBefore)} → ${pct(e.confidenceAfter)}`],
    ['BN distance', bn],
  ];
  if (e.objective) facts.push(['objective', `CE${e.objective.bn ? ` + ${e.objective.bn.weight} × BN statistics (${e.objective.bn.layers} layers)` : ' only'}`]);
  facts.push(['seconds', num(e.seconds, 1)]);
  if (e.note) facts.push(['note', e.note]);
  return facts;
}

/** One card per calibrated aux set, in calibration order (the first seed's calibration when the job repeats). */
export function calibrationCards(s: Pick<ViewState, 'gic' | 'embeddings'>): CalibrationCard[] {
  const cards = new Map<string, CalibrationCard>();
  for (const e of s.gic) {
    const c = cards.get(e.aux);
    if (c) c.count++;
    else cards.set(e.aux, { aux: e.aux, entry: e, count: 1, facts: calibrationFacts(e), embedding: s.embeddings.find((x) => x.aux === e.aux) });
  }
  return [...cards.values()];
}
