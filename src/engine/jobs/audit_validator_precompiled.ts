/**
 * In the bundles, esbuild.js puts here the validator of AUDIT_SCHEMA compiled at build time (ajv's standalone
 * code, see audit_validator.ts) as this module's `precompiledAuditValidator`. Run from the source tree there is
 * none, and audit_validator.ts compiles the schema itself.
 */
export const precompiledAuditValidator: ((data: unknown) => boolean) | undefined = undefined;
