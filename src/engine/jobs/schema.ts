/**
 * The audit.json contract: one JSON Schema object that is both published (schema/audit.schema.json, written by
 * scripts/gen-schema.ts) and used by the validator, so the two cannot drift. Unknown fields are errors.
 */
export const DEFENSE_IDS = ['ft', 'fp', 'nad', 'anp', 'ibau', 'sau', 'ftsam', 'fst', 'npd', 'rnp', 'clp', 'nc'] as const;
export const AUX_TYPES = ['seen', 'unseen', 'ood', 'external', 'synthetic'] as const;
export const SHIFT_NAMES = ['brightness', 'contrast', 'blur', 'noise', 'rotation', 'jitter'] as const;
export const DATA_FORMATS = ['mnist-embedded', 'imagefolder', 'npy', 'npz', 'idx', 'cifar10-bin'] as const;

const dataSource = {
  type: 'object',
  additionalProperties: false,
  properties: {
    path: { type: 'string', description: 'file or folder, relative to the job file (not needed for mnist-embedded)' },
    format: { enum: DATA_FORMATS },
    labels: { type: 'string', description: 'labels file for npy images' },
  },
} as const;

export const AUDIT_SCHEMA = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  $id: 'https://backdoor-audit.local/audit.schema.json',
  title: 'Backdoor Audit job (audit.json)',
  type: 'object',
  additionalProperties: false,
  required: ['model', 'data'],
  definitions: { dataSource },
  properties: {
    model: {
      oneOf: [
        { type: 'string' },
        {
          type: 'object',
          additionalProperties: false,
          required: ['path'],
          properties: {
            path: { type: 'string' },
            arch: { type: 'string' },
            inputShape: { type: 'array', items: { type: 'integer', minimum: 1 }, minItems: 3, maxItems: 3 },
            numClasses: { type: 'integer', minimum: 2 },
            normalize: {
              type: 'object',
              additionalProperties: false,
              required: ['mean', 'std'],
              properties: { mean: { type: 'array', items: { type: 'number' } }, std: { type: 'array', items: { type: 'number', exclusiveMinimum: 0 } } },
            },
          },
        },
      ],
    },
    data: {
      type: 'object',
      additionalProperties: false,
      required: ['test'],
      properties: { train: { $ref: '#/definitions/dataSource' }, test: { $ref: '#/definitions/dataSource' } },
    },
    attack: {
      type: 'object',
      additionalProperties: false,
      required: ['type'],
      properties: {
        type: { enum: ['badnets', 'blended', 'sig', 'wanet'] },
        target: { type: 'integer', minimum: 0, default: 0 },
        allToAll: { type: 'boolean', default: false },
        size: { type: 'integer', minimum: 1 },
        offset: { type: 'integer', minimum: 0 },
        alpha: { type: 'number', minimum: 0, maximum: 1 },
        seed: { type: 'integer' },
      },
    },
    aux: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'type'],
        properties: {
          name: { type: 'string', pattern: '^[A-Za-z0-9_.-]+$' },
          type: { enum: AUX_TYPES },
          source: { $ref: '#/definitions/dataSource' },
          size: { type: 'integer', minimum: 1 },
          perClass: { type: 'integer', minimum: 1 },
          shift: { enum: SHIFT_NAMES },
        },
      },
    },
    defenses: {
      type: 'array',
      items: {
        oneOf: [
          { enum: DEFENSE_IDS },
          {
            type: 'object',
            additionalProperties: false,
            required: ['name'],
            properties: { name: { enum: DEFENSE_IDS }, profile: { enum: ['fast', 'paper'] }, params: { type: 'object' } },
          },
        ],
      },
    },
    gic: {
      type: 'object',
      additionalProperties: false,
      properties: {
        mode: { enum: ['off', 'on', 'both'], default: 'off' },
        delta: { type: 'number', exclusiveMinimum: 0, default: 0.1 },
        norm: { enum: ['inf', '2'], default: 'inf' },
        lambdaBn: { type: 'number', minimum: 0, default: 1 },
        epochs: { type: 'integer', minimum: 1, default: 20 },
        lr: { type: 'number', exclusiveMinimum: 0, default: 0.001 },
      },
    },
    profile: { enum: ['fast', 'paper'], default: 'fast' },
    embedding: {
      type: 'object',
      additionalProperties: false,
      properties: { method: { enum: ['tsne', 'none'], default: 'tsne' }, points: { type: 'integer', minimum: 10, default: 600 } },
    },
    seed: { type: 'integer', default: 0 },
    device: { enum: ['auto', 'gpu', 'cpu'], default: 'auto' },
  },
} as const;

export interface DataSourceSpec {
  path?: string;
  format?: (typeof DATA_FORMATS)[number];
  labels?: string;
}

export interface Job {
  model: string | { path: string; arch?: string; inputShape?: [number, number, number]; numClasses?: number; normalize?: { mean: number[]; std: number[] } };
  data: { train?: DataSourceSpec; test: DataSourceSpec };
  attack?: { type: 'badnets' | 'blended' | 'sig' | 'wanet'; target: number; allToAll: boolean; size?: number; offset?: number; alpha?: number; seed?: number };
  aux?: Array<{ name: string; type: (typeof AUX_TYPES)[number]; source?: DataSourceSpec; size?: number; perClass?: number; shift?: (typeof SHIFT_NAMES)[number] }>;
  defenses?: Array<(typeof DEFENSE_IDS)[number] | { name: (typeof DEFENSE_IDS)[number]; profile?: 'fast' | 'paper'; params?: Record<string, number> }>;
  gic?: { mode: 'off' | 'on' | 'both'; delta: number; norm: 'inf' | '2'; lambdaBn: number; epochs: number; lr: number };
  profile: 'fast' | 'paper';
  embedding?: { method: 'tsne' | 'none'; points: number };
  seed: number;
  device: 'auto' | 'gpu' | 'cpu';
}
