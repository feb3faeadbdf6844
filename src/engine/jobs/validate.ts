/**
 * Loading and validating a job file: JSON syntax, the schema (ajv, with defaults applied), then the files it
 * names. The first problem becomes one InputError naming the field or file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import Ajv, { type ErrorObject } from 'ajv';
import { InputError } from '../errors';
import { AUDIT_SCHEMA, type Job, type DataSourceSpec } from './schema';

const ajv = new Ajv({ allErrors: false, useDefaults: true, strict: false });
const validateSchema = ajv.compile(AUDIT_SCHEMA as object);

function fieldPath(e: ErrorObject): string {
  const p = e.instancePath.replace(/^\//, '').split('/').filter(Boolean);
  return p.map((s, i) => (/^\d+$/.test(s) ? `[${s}]` : (i ? '.' : '') + s)).join('') || '(top level)';
}

/** The most useful error: an unknown field beats a failed `oneOf` branch. */
function describe(errors: ErrorObject[]): { message: string; field: string } {
  const extra = errors.find((e) => e.keyword === 'additionalProperties');
  const e = extra ?? errors[0];
  const field = fieldPath(e);
  if (e.keyword === 'additionalProperties') {
    const name = (e.params as { additionalProperty: string }).additionalProperty;
    return { message: `unknown field "${name}"`, field: field === '(top level)' ? name : `${field}.${name}` };
  }
  if (e.keyword === 'enum') return { message: `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')}`, field };
  if (e.keyword === 'required') return { message: `missing field "${(e.params as { missingProperty: string }).missingProperty}"`, field };
  return { message: e.message ?? 'invalid', field };
}

export function validateJobObject(obj: unknown, jobFile: string): Job {
  const copy = JSON.parse(JSON.stringify(obj));
  if (!validateSchema(copy)) {
    const { message, field } = describe(validateSchema.errors ?? []);
    throw new InputError(message, `${path.basename(jobFile)}: ${field}`);
  }
  const job = copy as Job;
  const base = path.dirname(jobFile);
  const must = (p: string, field: string) => {
    const abs = path.resolve(base, p);
    if (!fs.existsSync(abs)) throw new InputError(`no such file: ${p}`, `${path.basename(jobFile)}: ${field}`);
    return abs;
  };
  const source = (s: DataSourceSpec | undefined, field: string) => {
    if (!s) return;
    if (s.format === 'mnist-embedded') return;
    if (!s.path) throw new InputError('missing field "path"', `${path.basename(jobFile)}: ${field}`);
    s.path = must(s.path, `${field}.path`);
    if (s.labels) s.labels = must(s.labels, `${field}.labels`);
  };
  if (typeof job.model === 'string') job.model = must(job.model, 'model');
  else job.model.path = must(job.model.path, 'model.path');
  source(job.data.train, 'data.train');
  source(job.data.test, 'data.test');
  job.aux?.forEach((a, i) => source(a.source, `aux[${i}].source`));
  return job;
}

export function loadJob(jobFile: string): Job {
  let text: string;
  try {
    text = fs.readFileSync(jobFile, 'utf8');
  } catch {
    throw new InputError('cannot read the job file', jobFile);
  }
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw new InputError(`not valid JSON: ${(e as Error).message}`, jobFile);
  }
  return validateJobObject(obj, jobFile);
}
