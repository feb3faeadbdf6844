/** The registry of purification defenses, by job id. */
import type { Defense } from './defense';
import { ft } from './ft';

export const DEFENSES: Record<string, Defense> = {
  ft,
};

export function getDefense(id: string): Defense | undefined {
  return DEFENSES[id];
}
