/** The registry of purification defenses, by job id. */
import type { Defense } from './defense';
import { isDefenseId, type DefenseId } from '../catalog';
import { clp } from './clp';
import { fp } from './fp';
import { fst } from './fst';
import { ft } from './ft';
import { ftsam } from './ftsam';
import { nad } from './nad';
import { anp } from './anp';
import { rnp } from './rnp';
import { sau } from './sau';
import { ibau } from './ibau';
import { nc } from './nc';
import { npd } from './npd';

/** One entry per catalog id (catalog.ts): a defense named there without a file here fails to compile. */
export const DEFENSES: Record<DefenseId, Defense> = {
  ft,
  fp,
  nad,
  ftsam,
  fst,
  clp,
  anp,
  rnp,
  sau,
  ibau,
  nc,
  npd,
};

export function getDefense(id: string): Defense | undefined {
  return isDefenseId(id) ? DEFENSES[id] : undefined;
}
