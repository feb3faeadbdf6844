/**
 * The ajv validator of AUDIT_SCHEMA (job_schema.ts), compiled here or at build time. Compiling the schema takes
 * ajv about 140 ms (and a garbage collection after it) at every start of a bundle that validates a job: the
 * CLI's `run` did it before reading the job. esbuild.js therefore compiles it once, with these same options, to
 * standalone code that the bundles import in place of audit_validator_precompiled.ts; the source tree (tests,
 * scripts) compiles it on first use.
 */
import Ajv, { type ValidateFunction } from 'ajv';
import standaloneCode from 'ajv/dist/standalone';
import { AUDIT_SCHEMA } from '../job_schema';
import { precompiledAuditValidator } from './audit_validator_precompiled';

// allErrors off: the first error is the one reported, and ajv stops there (cheaper, and with if/then
// variants the first error is the meaningful one). verbose: errors carry their schema, for `errorMessage`
// and for listing the known fields of an object.
function newAjv(source: boolean): Ajv {
  const ajv = new Ajv({ allErrors: false, useDefaults: true, verbose: true, strict: true, strictTypes: false, strictTuples: false, strictRequired: false, code: { source } });
  // VS Code's annotation for custom messages; ajv must know it to stay in strict mode.
  ajv.addVocabulary(['errorMessage']);
  return ajv;
}

/** AUDIT_SCHEMA compiled now (the source tree's path, and the reference the build's code is tested against). */
export function compileAuditValidator(): ValidateFunction {
  return newAjv(false).compile(AUDIT_SCHEMA as object);
}

/** The validator as a CommonJS module's source (`module.exports` is the function), for esbuild.js. */
export function auditValidatorSource(): string {
  const ajv = newAjv(true);
  return standaloneCode(ajv, ajv.compile(AUDIT_SCHEMA as object));
}

let validator: ValidateFunction | undefined;

/** The bundle's precompiled validator, else one compiled on first use. */
export function auditValidator(): ValidateFunction {
  return (validator ??= (precompiledAuditValidator as ValidateFunction | undefined) ?? compileAuditValidator());
}
