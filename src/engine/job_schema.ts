/**
 * The audit.json contract (SPEC section 9). AUDIT_SCHEMA is the single source: scripts/gen-schema.ts publishes
 * it as schema/audit.schema.json (VS Code validates and completes job files with it through `jsonValidation`)
 * and validate.ts compiles the very same object with ajv, so the editor and the engine cannot disagree.
 *
 * Conventions, chosen so that both consumers give useful messages:
 * - `additionalProperties: false` on every object: a misspelt field is an error, never silently ignored.
 * - Variants (attack types, aux types, string-or-object forms) use `if`/`then`/`else` rather than `oneOf`:
 *   a failed `oneOf` reports every branch's complaint, while `if`/`then` yields exactly one error that the
 *   validator can phrase as "missing field "source" (needed when type is unseen)".
 * - `default` documents what an omitted field means; the validator applies it (ajv `useDefaults`), so the
 *   engine reads one resolved `Job` and never repeats a default.
 * - `errorMessage` (understood by VS Code's JSON service, registered as an annotation for ajv) replaces
 *   messages that would otherwise be cryptic, e.g. for `pattern` and `not`.
 *
 * The TypeScript types below are written alongside the schema rather than derived from it: the conditional
 * variants are beyond what type-level derivation handles legibly. The unit test validates a job literal typed
 * as `JobInput` that sets every field, so a field added to one side only fails the test.
 */

import {
  ATTACK_TYPES,
  AUX_TYPES,
  DATA_FORMATS,
  DEFENSE_IDS,
  DEVICES,
  MODEL_FORMATS,
  PROFILES,
  SHIFT_NAMES,
  type AttackType,
  type AuxType,
  type DataFormat,
  type DefenseId,
  type Device,
  type ModelFormat,
  type Profile,
  type ShiftName,
} from './catalog';

// The names come from the catalog; re-exported for the modules that read them with the schema.
export { ATTACK_TYPES, AUX_TYPES, DATA_FORMATS, DEFENSE_IDS, DEVICES, MODEL_FORMATS, PROFILES, SHIFT_NAMES };
export type { AttackType, AuxType, DataFormat, DefenseId, Device, ModelFormat, Profile, ShiftName };

// A variant condition on a discriminating field. `required` matters: without it an object lacking the field
// would satisfy every `if` and collect every variant's defaults.
const when = (field: string, value: string | readonly string[]) =>
  ({ required: [field], properties: { [field]: typeof value === 'string' ? { const: value } : { enum: value } } }) as const;

const relPath = (what: string) => ({ type: 'string', minLength: 1, description: `${what}, relative to the job file (or absolute)` }) as const;

const dataSource = {
  type: 'object',
  description: 'Where images and labels come from. Images are N,H,W,C (uint8, or float in [0,1]); labels are class indices.',
  additionalProperties: false,
  properties: {
    path: relPath('file or folder: an image folder (one sub-folder per class), an .npy/.npz file, an *-idx3-ubyte[.gz] file, or a CIFAR-10 binary batch file or folder'),
    format: {
      enum: DATA_FORMATS,
      description:
        'mnist-embedded: the MNIST digits shipped with the tool (no path; split into disjoint train, auxiliary-pool and test parts by the job seed). Without "format" it is inferred from the path: a folder is imagefolder, .npy, .npz, *-idx3-ubyte[.gz] is idx, *.bin is cifar10-bin.',
    },
    labels: relPath('labels file: required for npy images (an int array of length N); for idx, the *-idx1-ubyte file when its name does not follow the images file'),
    resize: {
      // No schema default: one would be written into mnist-embedded sources too, where the field is refused.
      type: 'boolean',
      description:
        "default false. Resize images to the model's input height and width (bilinear, antialiased when shrinking); without it images of another size, or of mixed sizes in an image folder, are refused. Channels (grey/RGB) are always converted.",
    },
  },
  allOf: [
    {
      // The embedded set is found by the tool; a path here would suggest a user file is read when it is not.
      if: when('format', 'mnist-embedded'),
      then: { properties: { path: false, labels: false, resize: false } },
      else: { required: ['path'] },
    },
    { if: when('format', 'npy'), then: { required: ['labels'] } },
  ],
} as const;

const modelObject = {
  type: 'object',
  additionalProperties: false,
  required: ['path'],
  properties: {
    path: relPath('model file: .pt, .pth, .safetensors, .onnx or a TensorFlow.js model.json'),
    arch: {
      type: 'string',
      minLength: 1,
      description: 'architecture of a state_dict that detection does not recognize (a state_dict has no graph)',
      examples: ['preact-resnet18', 'small-cnn', 'small-cnn-32'],
    },
    inputShape: {
      type: 'array',
      description: '[H, W, C] of the model input',
      items: { type: 'integer', minimum: 1 },
      minItems: 3,
      maxItems: 3,
    },
    numClasses: { type: 'integer', minimum: 2 },
    normalize: {
      type: 'object',
      description: 'per-channel normalization the model expects on [0,1] pixels: (x - mean) / std',
      additionalProperties: false,
      required: ['mean', 'std'],
      properties: {
        mean: { type: 'array', minItems: 1, items: { type: 'number' } },
        std: { type: 'array', minItems: 1, items: { type: 'number', exclusiveMinimum: 0 } },
      },
    },
  },
} as const;

// Fields every attack accepts; each variant's `then` repeats their names (as `true`) because
// additionalProperties only sees the properties declared next to it.
const attackCommon = {
  type: { enum: ATTACK_TYPES, description: 'the backdoor the victim is suspected to carry; used to build the triggered test set (ASR, RA)' },
  target: { type: 'integer', minimum: 0, default: 0, description: 'target label (all-to-one)' },
  allToAll: { type: 'boolean', default: false, description: 'all-to-all attack: label y is sent to (y + 1) mod K' },
} as const;
const common = { type: true, target: true, allToAll: true } as const;

// A trigger image file: PNG, JPEG or a numpy array (H,W[,C]; uint8, or float in [0,1]).
const triggerImage = (what: string) => relPath(`${what} (PNG, JPEG or .npy: H,W or H,W,C, uint8 or float in [0,1])`);

// No default: an omitted attack means no trigger is known ("unknown"), or, when the model file is a BackdoorBench
// attack record, the poisoned test set stored in it ("record"). The runner decides, once it has read the model.
const attack = {
  type: 'object',
  description:
    'the backdoor to measure ASR and RA with. Omitted: "record" when the model is a BackdoorBench attack_result.pt, else "unknown" (ACC, Neural Cleanse detection and purification; ASR, RA and DER are null, shown as n/a).',
  required: ['type'],
  properties: attackCommon,
  allOf: [
    {
      if: when('type', 'badnets'),
      then: {
        additionalProperties: false,
        properties: {
          ...common,
          size: { type: 'integer', minimum: 1, default: 3, description: 'side of the white square, pixels' },
          offset: { type: 'integer', minimum: 0, default: 0, description: 'pixels in from the bottom-right corner' },
          patch: {
            type: 'object',
            description:
              'a patch image instead of the white square. Pasted whole at "position" (default the bottom-right corner minus offset); with "position": "mask" it is BackdoorBench\'s full-size trigger image instead: resized to the input (as PIL does), its non-zero pixels replace the image\'s.',
            additionalProperties: false,
            required: ['image'],
            properties: {
              image: triggerImage('patch image'),
              position: {
                type: 'string',
                pattern: '^(\\d+,\\d+|top-left|top-right|bottom-left|bottom-right|mask)$',
                errorMessage: 'must be "x,y" (the top-left pixel of the patch), a corner (top-left, top-right, bottom-left, bottom-right) or "mask"',
                description: '"x,y" (column, row of the patch\'s top-left pixel), a corner, or "mask"',
                examples: ['24,24', 'bottom-right', 'mask'],
              },
            },
          },
        },
      },
    },
    {
      if: when('type', 'blended'),
      then: {
        additionalProperties: false,
        properties: {
          ...common,
          image: triggerImage('trigger image, resized to the input as BackdoorBench does (PIL bilinear); default a seeded noise image'),
          alpha: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: 0.2, description: "blend weight: x' = (1 - alpha) x + alpha t" },
        },
      },
    },
    {
      if: when('type', 'sig'),
      then: {
        additionalProperties: false,
        properties: {
          ...common,
          freq: { type: 'number', exclusiveMinimum: 0, default: 6, description: 'periods of the sinusoid across the image width' },
          amplitude: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: 40 / 255, description: 'amplitude on [0,1] pixels (40/255)' },
        },
      },
    },
    {
      if: when('type', 'wanet'),
      then: {
        additionalProperties: false,
        properties: {
          ...common,
          seed: { type: 'integer', minimum: 0, description: 'seed of the warp field; default the job seed' },
          grids: relPath(
            'the warp of a trained WaNet victim: a file holding identity_grid and noise_grid (1,H,W,2) as BackdoorBench saves them (its state_dict.pt, a .pt of just those two, or an .npz); then k, s and seed are not used',
          ),
          k: { type: 'integer', minimum: 2, default: 4, description: 'control grid size k x k' },
          s: { type: 'number', exclusiveMinimum: 0, default: 0.5, description: 'warp strength' },
        },
      },
    },
    {
      if: when('type', 'poisoned-set'),
      then: {
        additionalProperties: false,
        required: ['data'],
        properties: {
          ...common,
          data: {
            ...dataSource,
            description:
              'the triggered test images (any data format; N,H,W,C or N,C,H,W; uint8, float in [0,1] or float in 0-255, detected) with their true labels, or without labels (npy without "labels", npz without a labels array): then ASR counts every image and RA is n/a',
            // Labels are optional here; the embedded digits are no one's triggered images.
            properties: { ...dataSource.properties, format: { enum: DATA_FORMATS.filter((f) => f !== 'mnist-embedded'), description: dataSource.properties.format.description } },
            required: ['path'],
            allOf: undefined,
          },
        },
      },
    },
    {
      if: when('type', ['record', 'unknown']),
      then: { additionalProperties: false, properties: { ...common } },
    },
  ],
} as const;

const auxSet = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'type'],
  properties: {
    name: {
      type: 'string',
      pattern: '^[A-Za-z0-9_.-]+$',
      errorMessage: 'may contain only letters, digits, "_", "." and "-" (it names output files)',
      description: 'unique name; used in results and output file names',
    },
    type: {
      enum: AUX_TYPES,
      description:
        'seen: subset of data.train; unseen: held-out in-distribution split (source); ood: source with a distribution shift; external: another dataset with the same labels (source); synthetic: inverted from the victim',
    },
    source: dataSource,
    size: { type: 'integer', minimum: 1, description: 'images in the set, class-balanced; default 5% of the training set' },
    perClass: { type: 'integer', minimum: 1, description: 'images per class (instead of size)' },
    shift: { enum: SHIFT_NAMES, description: 'distribution shift of an ood set (seeded)' },
  },
  allOf: [
    { if: when('type', ['unseen', 'ood', 'external']), then: { required: ['source'] } },
    // A seen set comes from data.train and a synthetic one from the model: a source would be ignored.
    { if: when('type', ['seen', 'synthetic']), then: { properties: { source: false } } },
    { if: when('type', 'ood'), then: { required: ['shift'] }, else: { properties: { shift: false } } },
    { not: { required: ['size', 'perClass'] }, errorMessage: 'give either "size" or "perClass", not both' },
  ],
} as const;

const defense = {
  // A bare id, or an object for a per-defense profile and parameter overrides.
  if: { type: 'string' },
  then: { enum: DEFENSE_IDS },
  else: {
    type: 'object',
    additionalProperties: false,
    required: ['name'],
    properties: {
      name: { enum: DEFENSE_IDS },
      profile: { enum: PROFILES, description: 'default: the job profile' },
      params: {
        type: 'object',
        description: "overrides of the defense's defaults for the profile (names are checked by the defense)",
        additionalProperties: { type: ['number', 'string', 'boolean', 'array'], items: { type: 'number' } },
      },
    },
  },
} as const;

export const AUDIT_SCHEMA = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  $id: 'https://backdoor-audit.local/audit.schema.json',
  title: 'Backdoor Audit job (audit.json)',
  description: 'An audit job: a victim model, clean and triggered test data, auxiliary sets, defenses and GIC. Paths are relative to this file. Unknown fields are errors.',
  type: 'object',
  additionalProperties: false,
  required: ['model', 'data'],
  allOf: [{ not: { type: 'object', required: ['seed', 'seeds'] }, errorMessage: 'give either "seed" or "seeds", not both' }],
  properties: {
    $schema: { type: 'string', description: 'this schema, for editors' },
    model: {
      description: 'the model file, or an object naming its architecture, input shape, classes and normalization',
      if: { type: 'string' },
      then: relPath('model file: .pt, .pth, .safetensors, .onnx or a TensorFlow.js model.json'),
      else: modelObject,
    },
    data: {
      type: 'object',
      additionalProperties: false,
      required: ['test'],
      properties: {
        train: { ...dataSource, description: "the victim's training data: needed for seen auxiliary sets and reference embeddings" },
        test: { ...dataSource, description: 'clean test set (ACC); its non-target images, triggered, give ASR and RA' },
      },
    },
    attack,
    aux: { type: 'array', default: [], description: 'auxiliary (clean) sets handed to the defenses', items: auxSet },
    defenses: { type: 'array', default: [], description: 'defenses run on every auxiliary set', items: defense },
    gic: {
      type: 'object',
      default: {},
      description: 'Guided Input Calibration of the auxiliary sets: g(x) with ||g(x) - x||_p <= delta',
      additionalProperties: false,
      properties: {
        mode: { enum: ['off', 'on', 'both'], default: 'off', description: 'both: every defense runs with and without GIC' },
        delta: { type: 'number', exclusiveMinimum: 0, default: 0.1, description: 'bound on [0,1] pixels' },
        norm: { enum: ['inf', '2', 2], default: 'inf', description: 'L_inf or L_2 ball' },
        lambdaBn: { type: 'number', minimum: 0, default: 1, description: 'weight of the BatchNorm-statistics term' },
        epochs: { type: 'integer', minimum: 1, default: 20 },
        lr: { type: 'number', exclusiveMinimum: 0, default: 0.001, description: 'Adam learning rate' },
      },
    },
    profile: { enum: PROFILES, default: 'fast', description: "fast: fewer epochs, minutes on a CPU; paper: the paper's hyper-parameters" },
    embedding: {
      type: 'object',
      default: {},
      additionalProperties: false,
      properties: {
        method: { enum: ['tsne', 'none'], default: 'tsne' },
        points: { type: 'integer', minimum: 10, default: 600, description: 'points per set in the plot' },
      },
    },
    seed: {
      type: 'integer',
      minimum: 0,
      // No schema default: a default would be written next to "seeds" and then refused as giving both.
      description: 'default 0. One seed for every random choice: the job is deterministic for a seed',
    },
    seeds: {
      type: 'array',
      minItems: 1,
      uniqueItems: true,
      items: { type: 'integer', minimum: 0 },
      description:
        'instead of "seed": run every cell once per seed and report mean, std and the paired GIC effect with a 95% t-interval. Each seed draws its own auxiliary samples, GIC calibration and defense streams; the first seed also fixes what all repetitions share (the embedded data split, the trigger, the embeddings)',
      examples: [[0, 1, 2, 3, 4]],
    },
    device: { enum: DEVICES, default: 'auto' },
    outputs: {
      type: 'object',
      default: {},
      additionalProperties: false,
      properties: {
        formats: {
          type: 'array',
          minItems: 1,
          uniqueItems: true,
          items: { enum: MODEL_FORMATS },
          description: "formats of the purified models; default the input model's format",
        },
      },
    },
  },
} as const;

/** The published file's exact text (scripts/gen-schema.ts writes it; a test compares it). */
export function publishedSchemaText(): string {
  return JSON.stringify(AUDIT_SCHEMA, null, 2) + '\n';
}

// ---- Types: JobInput is what a file may say; Job is what loadJob returns (defaults applied, paths absolute).

export interface DataSourceSpec {
  path?: string;
  format?: DataFormat;
  labels?: string;
  /** Resize to the model's input height/width (default false: other sizes are refused). */
  resize?: boolean;
}

/** A data source after validation: the format is known (given or inferred) and paths are absolute. */
export interface ResolvedDataSource extends DataSourceSpec {
  format: DataFormat;
}

export interface ModelSpec {
  path: string;
  arch?: string;
  inputShape?: [number, number, number];
  numClasses?: number;
  normalize?: { mean: number[]; std: number[] };
}

interface AttackBase {
  target: number;
  allToAll: boolean;
}

/**
 * The attack of a validated job, in the engine's vocabulary (attacks/index.ts `AttackSpec`: `frequency`, and
 * decoded pixels under `patch`/`image`), so that it can be handed to makeAttack as is. Files the job names
 * stay files here, under their own names (`patchFile`, `imageFile`): decoding them needs the model's input
 * shape, which is known only once the model is loaded.
 */
export type AttackJobSpec =
  | (AttackBase & { type: 'badnets'; size: number; offset: number; patchFile?: { path: string; position: PatchPosition } })
  | (AttackBase & { type: 'blended'; alpha: number; imageFile?: string })
  | (AttackBase & { type: 'sig'; frequency: number; amplitude: number })
  | (AttackBase & { type: 'wanet'; k: number; s: number; seed?: number; gridsFile?: string })
  | (AttackBase & { type: 'poisoned-set'; data: ResolvedDataSource })
  | (AttackBase & { type: 'record' })
  | (AttackBase & { type: 'unknown' });

/** Where a patch image goes: pasted at a pixel or a corner, or BackdoorBench's full-size mask image. */
export type PatchPosition = { x: number; y: number } | { corner: 'top-left' | 'top-right' | 'bottom-left' | 'bottom-right' } | 'mask';

export interface AuxSpec {
  name: string;
  type: AuxType;
  source?: ResolvedDataSource;
  size?: number;
  perClass?: number;
  shift?: ShiftName;
}

export type DefenseParamValue = number | string | boolean | number[];

export interface DefenseSpec {
  name: DefenseId;
  /** The defense's own profile, or the job's. */
  profile: Profile;
  params?: Record<string, DefenseParamValue>;
}

export interface GicSpec {
  mode: 'off' | 'on' | 'both';
  delta: number;
  norm: 'inf' | '2';
  lambdaBn: number;
  epochs: number;
  lr: number;
}

/** A validated job: every default applied, every path absolute and existing. */
export interface Job {
  /**
   * Always a ModelSpec after validation (a bare path in the file becomes `{ path }`); typed with the string
   * form too because model loaders take either.
   */
  model: string | ModelSpec;
  data: { train?: ResolvedDataSource; test: ResolvedDataSource };
  /** Absent when the job omits it: the runner then uses the model's attack record, or "unknown". */
  attack?: AttackJobSpec;
  aux: AuxSpec[];
  defenses: DefenseSpec[];
  gic: GicSpec;
  profile: Profile;
  embedding: { method: 'tsne' | 'none'; points: number };
  /** The seed of what every repetition shares: `seed`, or the first of `seeds`. */
  seed: number;
  /** The repetition seeds: `seeds`, or `[seed]`. */
  seeds: number[];
  device: Device;
  outputs: { formats?: ModelFormat[] };
}

type Opt<T, K extends keyof T> = Omit<T, K> & Partial<Pick<T, K>>;
interface AttackInputBase {
  target?: number;
  allToAll?: boolean;
}
/** The attack as written in audit.json. */
export type AttackInput =
  | (AttackInputBase & { type: 'badnets'; size?: number; offset?: number; patch?: { image: string; position?: string } })
  | (AttackInputBase & { type: 'blended'; image?: string; alpha?: number })
  | (AttackInputBase & { type: 'sig'; freq?: number; amplitude?: number })
  | (AttackInputBase & { type: 'wanet'; seed?: number; grids?: string; k?: number; s?: number })
  | (AttackInputBase & { type: 'poisoned-set'; data: DataSourceSpec })
  | (AttackInputBase & { type: 'record' | 'unknown' });

/** What an audit.json may contain (before defaults and path resolution). */
export interface JobInput {
  $schema?: string;
  model: string | ModelSpec;
  data: { train?: DataSourceSpec; test: DataSourceSpec };
  attack?: AttackInput;
  aux?: Array<Omit<AuxSpec, 'source'> & { source?: DataSourceSpec }>;
  defenses?: Array<DefenseId | Opt<DefenseSpec, 'profile'>>;
  gic?: Partial<Omit<GicSpec, 'norm'>> & { norm?: GicSpec['norm'] | 2 };
  profile?: Profile;
  embedding?: Partial<Job['embedding']>;
  seed?: number;
  seeds?: number[];
  device?: Device;
  outputs?: Job['outputs'];
}
