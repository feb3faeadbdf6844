/** The registry of purification defenses, by job id. */
import type { Defense } from './defense';
import { clp } from './clp';
import { fp } from './fp';
import { fst } from './fst';
import { ft } from './ft';
import { ftsam } from './ftsam';
import { nad } from './nad';
import { anp } from './anp';
import { rnp } from './rnp';

export const DEFENSES: Record<string, Defense> = {
  ft,
  fp,
  nad,
  ftsam,
  fst,
  clp,
  anp,
  rnp,
};

export function getDefense(id: string): Defense | undefined {
  return DEFENSES[id];
}
