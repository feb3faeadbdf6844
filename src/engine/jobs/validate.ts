/**
 * Loading and validating a job: JSON syntax, the schema of job_schema.ts (ajv, defaults applied), the rules a
 * schema cannot express (unique names, consistent shapes), then the files the job names, resolved against the
 * job file's folder. The first problem becomes one InputError whose `where` is `<job file>: <field path>`, so
 * the CLI prints e.g. `error: unknown field "colour" (audit.json: aux[0].colour)`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ErrorObject } from 'ajv';
import { InputError } from '../errors';
import { guessDataFormat, needsAuxData } from '../catalog';
import { getDefense } from '../defenses';
import { paramValueProblem } from '../defenses/defense';
import { AUDIT_SCHEMA, type DataFormat, type AttackInput, type AttackJobSpec, type DataSourceSpec, type Job, type ModelSpec, type PatchPosition, type ResolvedDataSource } from '../job_schema';
import { auditValidator } from './audit_validator';

/** Shown in `where` when a job has no file (built in memory). */
const IN_MEMORY = 'job';

/** Load, validate and resolve a job file. Throws InputError on the first problem. */
export function loadJob(jobPath: string): Job {
  const label = path.basename(jobPath);
  let text: string;
  try {
    text = fs.readFileSync(jobPath, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new InputError(code === 'ENOENT' ? 'no such job file' : code === 'EISDIR' ? 'the job is a folder, not a file' : `cannot read the job file (${code ?? e})`, jobPath);
  }
  const obj = parseJson(text, label);
  try {
    return validateJobObject(obj, path.dirname(path.resolve(jobPath)), label);
  } catch (e) {
    // Copying and schema-checking a value recurse over it: deep nesting overflows the stack there.
    if (e instanceof RangeError) throw new InputError('the job nests arrays or objects too deeply', label);
    throw e;
  }
}

/**
 * Validate an in-memory job (the demo and the extension build them). Relative paths resolve against
 * `baseDir`; `label` names the job in error messages. The input object is not modified.
 */
export function validateJobObject(obj: unknown, baseDir: string, label = IN_MEMORY): Job {
  // ajv writes defaults into the object it validates: work on a copy so callers keep what they passed.
  const job = obj === undefined ? obj : JSON.parse(JSON.stringify(obj));
  const validateSchema = auditValidator();
  if (!validateSchema(job)) {
    const { message, field } = describeError(validateSchema.errors ?? []);
    throw new InputError(message, where(label, field));
  }
  const j = job as Record<string, unknown> & Job;
  delete (j as { $schema?: unknown }).$schema;
  const modelField = typeof j.model === 'string' ? 'model' : 'model.path';
  const model: ModelSpec = typeof j.model === 'string' ? { path: j.model } : j.model;
  j.model = model;
  j.defenses = (j.defenses as unknown as Array<string | Job['defenses'][number]>).map((d) => (typeof d === 'string' ? { name: d as Job['defenses'][number]['name'], profile: j.profile } : { ...d, profile: d.profile ?? j.profile }));
  // "norm": 2 is the natural way to write it; the engine compares strings.
  j.gic.norm = String(j.gic.norm) as Job['gic']['norm'];
  // One seed, or several repetitions of every cell; the first fixes what the repetitions share.
  j.seeds = j.seeds ?? [j.seed ?? 0];
  j.seed = j.seeds[0];
  checkRules(j, label);
  resolvePaths(j, model, path.resolve(baseDir), label, modelField);
  return j;
}

function where(label: string, field: string): string {
  return field ? `${label}: ${field}` : label;
}

// ---- JSON syntax

/**
 * JSON.parse, with a syntax error reported as `file:line:column` and a short reason. Node's own messages give
 * a character offset at best (and sometimes quote a multi-line snippet instead), so the error is located again
 * by a small scanner that runs only once parsing has already failed.
 */
export function parseJson(text: string, label: string): unknown {
  const body = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text; // editors on Windows may write a BOM
  try {
    return JSON.parse(body);
  } catch (e) {
    // V8's parser recurses: thousands of nested brackets overflow the stack before any syntax error.
    if (e instanceof RangeError) throw new InputError('the job nests arrays or objects too deeply', label);
    const found = locateJsonError(body);
    const pos = found?.pos ?? body.length;
    const what = found?.what ?? (e as Error).message.split('\n')[0];
    const before = body.slice(0, pos);
    const line = before.split('\n').length;
    const column = pos - before.lastIndexOf('\n');
    throw new InputError(`not valid JSON: ${what}`, `${label}:${line}:${column}`);
  }
}

class JsonStop {
  constructor(
    readonly pos: number,
    readonly what: string,
  ) {}
}

/** Offset and reason of the first JSON syntax error in `s` (undefined if there is none). */
export function locateJsonError(s: string): { pos: number; what: string } | undefined {
  let i = 0;
  const fail = (what: string, pos = i): never => {
    throw new JsonStop(pos, what);
  };
  const found = () => (i >= s.length ? 'the end of the file' : JSON.stringify(s[i]));
  const ws = () => {
    for (;;) {
      const c = s[i];
      if (c === ' ' || c === '\t' || c === '\n' || c === '\r') i++;
      else if (c === '/' && (s[i + 1] === '/' || s[i + 1] === '*')) fail('comments are not allowed in JSON');
      else return;
    }
  };
  const str = () => {
    const start = i++;
    for (;;) {
      const c = s[i];
      if (c === undefined) fail('unterminated string', start);
      if (c === '"') return void i++;
      if (c === '\\') {
        if (!/^(["\\/bfnrt]|u[0-9a-fA-F]{4})/.test(s.slice(i + 1, i + 6))) fail('invalid escape in a string');
        i += s[i + 1] === 'u' ? 6 : 2;
        continue;
      }
      if (c.charCodeAt(0) < 0x20) fail('line break or control character inside a string (write \\n)');
      i++;
    }
  };
  const num = /-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
  const value = (): void => {
    ws();
    const c = s[i];
    if (c === '{') {
      i++;
      ws();
      if (s[i] === '}') return void i++;
      for (let comma = -1; ; ) {
        ws();
        if (s[i] !== '"') {
          if (s[i] === '}' && comma >= 0) fail('trailing comma before "}"', comma);
          fail(`expected a double-quoted field name, found ${found()}`);
        }
        str();
        ws();
        if (s[i] !== ':') fail(`expected ":" after the field name, found ${found()}`);
        i++;
        value();
        ws();
        if (s[i] === ',') comma = i++;
        else if (s[i] === '}') return void i++;
        else fail(`expected "," or "}" after a value, found ${found()}`);
      }
    }
    if (c === '[') {
      i++;
      ws();
      if (s[i] === ']') return void i++;
      for (let comma = -1; ; ) {
        ws();
        if (s[i] === ']') fail('trailing comma before "]"', comma);
        value();
        ws();
        if (s[i] === ',') comma = i++;
        else if (s[i] === ']') return void i++;
        else fail(`expected "," or "]" after an item, found ${found()}`);
      }
    }
    if (c === '"') return str();
    num.lastIndex = i;
    if (num.test(s)) return void (i = num.lastIndex);
    for (const lit of ['true', 'false', 'null']) if (s.startsWith(lit, i)) return void (i += lit.length);
    fail(i >= s.length ? 'the file ends too early' : c === "'" ? 'strings need double quotes' : `unexpected ${found()}`);
  };
  try {
    value();
    ws();
    if (i < s.length) fail(`unexpected ${found()} after the end of the JSON value`);
    return undefined;
  } catch (e) {
    if (e instanceof JsonStop) return { pos: e.pos, what: e.what };
    return undefined; // e.g. nesting deep enough to exhaust the stack: fall back to Node's message
  }
}

// ---- Schema errors -> one human message

/** `/aux/1/source/path` -> `aux[1].source.path`; keys that are not identifiers are quoted. */
export function fieldPath(pointer: string, extra?: string): string {
  const parts = pointer
    .split('/')
    .slice(1)
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
  if (extra !== undefined) parts.push(extra);
  let out = '';
  for (const p of parts) {
    if (/^\d+$/.test(p)) out += `[${p}]`;
    else if (/^[A-Za-z_$][\w$]*$/.test(p)) out += out ? `.${p}` : p;
    else out += `[${JSON.stringify(p)}]`;
  }
  return out;
}

/** The schema node at a JSON pointer into AUDIT_SCHEMA (ajv's schemaPath), or undefined. */
function schemaAt(pointer: string): unknown {
  let node: unknown = AUDIT_SCHEMA;
  for (const raw of pointer.replace(/^#/, '').split('/').slice(1)) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return node;
}

/** For an error inside a `then` or `else` branch, the condition that selected it: "when type is ood". */
function branchCondition(schemaPath: string): string {
  // `.../then/required`, `.../then/additionalProperties`, `.../else/properties/shift/false schema`
  const m = /^(.*)\/(then|else)\/(?:properties\/[^/]+\/false schema|[^/]+)$/.exec(schemaPath);
  if (!m) return '';
  const cond = (schemaAt(m[1]) as { if?: { properties?: Record<string, { const?: unknown; enum?: unknown[] }> } })?.if?.properties;
  if (!cond) return '';
  const [field, rule] = Object.entries(cond)[0];
  const values = rule.const !== undefined ? [rule.const] : rule.enum;
  if (!values) return '';
  const is = values.length === 1 ? `is ${values[0]}` : `is one of ${values.join(', ')}`;
  return m[2] === 'then' ? `when ${field} ${is}` : `unless ${field} ${is}`;
}

const TYPE_NAMES: Record<string, string> = { string: 'a string', number: 'a number', integer: 'an integer', boolean: 'true or false', object: 'an object', array: 'an array', null: 'null' };

/** Closest known name within edit distance 2, to suggest for a misspelt field. */
function suggest(name: string, known: string[]): string | undefined {
  let best: string | undefined;
  let bestD = 3;
  for (const k of known) {
    const d = editDistance(name.toLowerCase(), k.toLowerCase());
    if (d < bestD) [best, bestD] = [k, d];
  }
  // Short names are one edit from many unrelated words: allow two edits only from six letters on.
  return best !== undefined && bestD <= (name.length <= 5 ? 1 : 2) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length];
}

const orList = (xs: string[]) => (xs.length < 2 ? xs.join('') : `${xs.slice(0, -1).join(', ')} or ${xs[xs.length - 1]}`);

const show = (v: unknown) => (typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v) ?? String(v));

/** The first schema error as a sentence and the field it is about. */
export function describeError(errors: ErrorObject[]): { message: string; field: string } {
  // `if` errors only restate that a branch failed; the branch's own error says what is wrong.
  const e = errors.find((x) => x.keyword !== 'if' && x.keyword !== 'allOf') ?? errors[0];
  if (!e) return { message: 'invalid job', field: '' };
  const field = fieldPath(e.instancePath);
  const custom = (e.parentSchema as { errorMessage?: string } | undefined)?.errorMessage;
  const cond = branchCondition(e.schemaPath);
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'additionalProperties': {
      const name = String(p.additionalProperty);
      const known = Object.keys((e.parentSchema as { properties?: object })?.properties ?? {});
      const near = suggest(name, known);
      const hint = near ? `; did you mean "${near}"?` : cond ? ` ${cond}` : '';
      return { message: `unknown field "${name}"${hint}`, field: fieldPath(e.instancePath, name) };
    }
    case 'required': {
      const name = String(p.missingProperty);
      return { message: `missing field "${name}"${cond ? `, needed ${cond}` : ''}`, field: fieldPath(e.instancePath, name) };
    }
    case 'false schema': {
      // A field that is declared `false` in a branch: allowed elsewhere, not in this variant.
      const name = e.instancePath.split('/').pop() ?? '';
      return { message: cond ? `field "${name}" is not used ${cond}` : `field "${name}" is not allowed here`, field };
    }
    case 'enum':
      return { message: `must be one of ${(p.allowedValues as unknown[]).join(', ')}, not ${show(e.data)}`, field };
    case 'const':
      return { message: `must be ${show(p.allowedValue)}`, field };
    case 'type': {
      const types = String(p.type).split(',');
      // In the `else` of `if: {type: X}` the value was not X either: name both forms.
      const alt = /^(.*)\/else\/type$/.exec(e.schemaPath);
      const ifType = alt && (schemaAt(alt[1]) as { if?: { type?: string } })?.if?.type;
      if (ifType) types.unshift(ifType);
      return { message: `must be ${orList(types.map((t) => TYPE_NAMES[t] ?? t))}`, field };
    }
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
    case 'exclusiveMaximum':
      return { message: `must be ${p.comparison} ${p.limit}, not ${show(e.data)}`, field };
    case 'minItems':
    case 'maxItems': {
      const s = e.parentSchema as { minItems?: number; maxItems?: number };
      const n = s.minItems === s.maxItems ? `exactly ${s.minItems}` : e.keyword === 'minItems' ? `at least ${p.limit}` : `at most ${p.limit}`;
      return { message: `must have ${n} item${p.limit === 1 ? '' : 's'}`, field };
    }
    case 'minLength':
      return { message: custom ?? 'must not be empty', field };
    case 'uniqueItems':
      return { message: `lists ${show((e.data as unknown[])[p.j as number])} twice`, field };
    default:
      return { message: custom ?? `${e.message ?? 'is invalid'}${cond ? ` ${cond}` : ''}`, field };
  }
}

// ---- Rules the schema cannot express

function checkRules(job: Job, label: string): void {
  const fail = (message: string, field: string): never => {
    throw new InputError(message, where(label, field));
  };
  const names = new Map<string, number>();
  job.aux.forEach((a, i) => {
    if (names.has(a.name)) fail(`aux name "${a.name}" is already used by aux[${names.get(a.name)}]`, `aux[${i}].name`);
    names.set(a.name, i);
    if (a.type === 'seen' && !job.data.train) fail('a "seen" auxiliary set is drawn from data.train, which the job does not give', `aux[${i}].type`);
  });
  // Cells and output files are named by defense and aux set: a repeated defense would collide.
  const seen = new Map<string, number>();
  job.defenses.forEach((d, i) => {
    if (seen.has(d.name)) fail(`defense "${d.name}" is already listed at defenses[${seen.get(d.name)}]`, `defenses[${i}]`);
    seen.set(d.name, i);
    // Parameter names are the defense's own (its defaults for the profile): a misspelt one is refused here,
    // before anything runs, rather than failing the defense's rows one by one.
    const defense = getDefense(d.name);
    const known = defense?.defaults(d.profile);
    for (const k of Object.keys(d.params ?? {})) {
      if (known && !(k in known)) fail(`unknown parameter "${k}" for defense ${d.name} (known: ${Object.keys(known).join(', ')})`, `defenses[${i}].params.${k}`);
      const problem = defense && paramValueProblem(defense, k, d.params![k]);
      if (problem) fail(problem, `defenses[${i}].params.${k}`);
    }
  });
  if (job.aux.length === 0 && job.defenses.some((d) => needsAuxData(d.name))) {
    fail('the defenses purify with auxiliary data: add at least one auxiliary set', 'aux');
  }
  const m = job.model as ModelSpec;
  if (m.normalize) {
    const { mean, std } = m.normalize;
    if (mean.length !== std.length) fail(`mean has ${mean.length} values but std has ${std.length}`, 'model.normalize');
    const c = m.inputShape?.[2];
    if (c !== undefined && mean.length !== 1 && mean.length !== c) fail(`${mean.length} values for ${c} input channel${c === 1 ? '' : 's'}`, 'model.normalize.mean');
  }
  // An imported ONNX graph has no Keras counterpart here.
  const fmts = job.outputs?.formats ?? [];
  if (fmts.includes('tfjs') && /\.onnx$/i.test(m.path)) {
    fail('an ONNX model cannot be written as TensorFlow.js; choose onnx, pt or safetensors', `outputs.formats[${fmts.indexOf('tfjs')}]`);
  }
  if (m.numClasses !== undefined && job.attack && job.attack.target >= m.numClasses) fail(`target ${job.attack.target} is not a class of a ${m.numClasses}-class model`, 'attack.target');
}

// ---- Paths: resolve against the job folder, check they exist

/** The format a path implies, for sources that do not name one. */
export function inferDataFormat(p: string, isDir: boolean): DataFormat | undefined {
  return guessDataFormat(p, isDir, isDir ? fs.readdirSync(p) : []);
}

/**
 * The validated attack in the engine's vocabulary (see AttackJobSpec): files checked and made absolute, the
 * patch position parsed. The files are decoded by the runner, which knows the model's input shape.
 */
function resolveAttack(a: AttackInput, existing: (p: string, field: string, kind: 'file') => string, source: (s: DataSourceSpec, field: string) => ResolvedDataSource): AttackJobSpec {
  const base = { target: a.target ?? 0, allToAll: a.allToAll ?? false };
  switch (a.type) {
    case 'badnets':
      if (a.patch) return { ...base, type: 'badnets', size: a.size!, offset: a.offset!, patchFile: { path: existing(a.patch.image, 'attack.patch.image', 'file'), position: parsePosition(a.patch.position) } };
      return { ...base, type: 'badnets', size: a.size!, offset: a.offset! };
    case 'blended':
      return { ...base, type: 'blended', alpha: a.alpha!, ...(a.image ? { imageFile: existing(a.image, 'attack.image', 'file') } : {}) };
    case 'sig':
      return { ...base, type: 'sig', frequency: a.freq!, amplitude: a.amplitude! };
    case 'wanet':
      return { ...base, type: 'wanet', k: a.k!, s: a.s!, ...(a.seed !== undefined ? { seed: a.seed } : {}), ...(a.grids ? { gridsFile: existing(a.grids, 'attack.grids', 'file') } : {}) };
    case 'poisoned-set':
      return { ...base, type: 'poisoned-set', data: source(a.data, 'attack.data') };
    case 'record':
    case 'unknown':
      return { ...base, type: a.type };
  }
}

/** "x,y", a corner or "mask" (the schema checked the form); default the bottom-right corner. */
function parsePosition(p: string | undefined): PatchPosition {
  if (!p) return { corner: 'bottom-right' };
  if (p === 'mask') return 'mask';
  const m = /^(\d+),(\d+)$/.exec(p);
  if (m) return { x: Number(m[1]), y: Number(m[2]) };
  return { corner: p as 'top-left' | 'top-right' | 'bottom-left' | 'bottom-right' };
}

function resolvePaths(job: Job, model: ModelSpec, baseDir: string, label: string, modelField: string): void {
  /** Absolute path of an existing file (or folder when `dir` allows it); InputError naming the field otherwise. */
  const existing = (p: string, field: string, kind: 'file' | 'dir' | 'any'): string => {
    const abs = path.resolve(baseDir, p);
    let st: fs.Stats;
    try {
      st = fs.statSync(abs);
    } catch {
      throw new InputError(`no such file: ${p}`, where(label, field));
    }
    if (kind === 'file' && !st.isFile()) throw new InputError(`${p} is a folder, expected a file`, where(label, field));
    if (kind === 'dir' && !st.isDirectory()) throw new InputError(`${p} is a file, expected a folder (one sub-folder per class)`, where(label, field));
    return abs;
  };
  const source = (s: DataSourceSpec | undefined, field: string, labelsOptional = false): void => {
    if (!s || s.format === 'mnist-embedded') return;
    const given = s.path!; // the schema requires a path for every other format
    const abs = existing(given, `${field}.path`, s.format === 'imagefolder' ? 'dir' : s.format === 'cifar10-bin' ? 'any' : s.format ? 'file' : 'any');
    const format = s.format ?? inferDataFormat(abs, fs.statSync(abs).isDirectory());
    if (!format) throw new InputError(`cannot tell the format of ${given}: add "format" (one of imagefolder, npy, npz, idx, cifar10-bin)`, where(label, `${field}.format`));
    if (format === 'npy' && !s.labels && !labelsOptional) throw new InputError('npy images need a "labels" file', where(label, `${field}.labels`));
    (s as ResolvedDataSource).format = format;
    s.path = abs;
    if (s.labels) s.labels = existing(s.labels, `${field}.labels`, 'file');
  };

  model.path = existing(model.path, modelField, 'file');
  source(job.data.train, 'data.train');
  source(job.data.test, 'data.test');
  job.aux.forEach((a, i) => source(a.source, `aux[${i}].source`));
  if (job.attack) {
    job.attack = resolveAttack(job.attack as unknown as AttackInput, existing, (s, field) => {
      source(s, field, true);
      return s as ResolvedDataSource;
    });
  }
}
