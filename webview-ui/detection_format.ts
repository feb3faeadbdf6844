/**
 * Neural Cleanse's verdict as the panel shows it: the anomaly index per class as bars (flagged classes in the
 * alarm colour, the threshold as a line), the reversed trigger of each class with its caption, and the
 * sentences that name the chart and each image for a screen reader. Pure, so the shown values are unit tested.
 */
import type { NcDetection, ReversedTriggerImage } from '../src/shared/results';

/** NC flags a class whose mask norm is a small-side outlier with anomaly index above this (SPEC: 2). */
export const ANOMALY_THRESHOLD = 2;

export interface AnomalySeries {
  labels: string[];
  values: number[];
  flagged: boolean[];
}

export function anomalySeries(nc: NcDetection): AnomalySeries {
  const flagged = new Set(nc.flagged);
  return {
    labels: nc.anomalyIndex.map((_, c) => `class ${c}`),
    values: nc.anomalyIndex.map((v) => (Number.isFinite(v) ? v : 0)),
    flagged: nc.anomalyIndex.map((_, c) => flagged.has(c)),
  };
}

export function anomalyChartLabel(nc: NcDetection): string {
  const flagged = nc.flagged.map((c) => `class ${c} (${(nc.anomalyIndex[c] ?? 0).toFixed(2)})`);
  const top = nc.anomalyIndex
    .map((v, c) => ({ v, c }))
    .sort((a, b) => b.v - a.v)
    .slice(0, 3)
    .map((x) => `class ${x.c} ${x.v.toFixed(2)}`);
  return [
    `Bar chart: Neural Cleanse anomaly index per class, ${nc.anomalyIndex.length} classes, threshold ${ANOMALY_THRESHOLD} (small-mask outliers are flagged)`,
    flagged.length ? `flagged: ${flagged.join(', ')}` : 'no class flagged',
    `highest: ${top.join(', ')}`,
  ].join('; ') + '.';
}

export interface TriggerCard {
  trigger: ReversedTriggerImage;
  flagged: boolean;
  anomaly: number | undefined;
  caption: string;
  /** Accessible name of the image pair. */
  alt: string;
}

/** One card per reversed trigger, flagged classes first, then by class. */
export function triggerCards(nc: NcDetection): TriggerCard[] {
  const flagged = new Set(nc.flagged);
  return [...(nc.triggers ?? [])]
    .sort((a, b) => Number(flagged.has(b.label)) - Number(flagged.has(a.label)) || a.label - b.label)
    .map((t) => {
      const f = flagged.has(t.label);
      const a = nc.anomalyIndex[t.label];
      const ai = typeof a === 'number' ? `anomaly index ${a.toFixed(2)}` : 'anomaly index n/a';
      return {
        trigger: t,
        flagged: f,
        anomaly: a,
        caption: `class ${t.label}${f ? ' — flagged' : ''}: mask L1 ${t.maskL1}, ${ai}`,
        alt: `Reversed trigger of class ${t.label} (mask times pattern)${f ? ', flagged as a backdoor target' : ''}; mask L1 ${t.maskL1}, ${ai}`,
      };
    });
}
