// Writes schema/audit.schema.json from the single source in src/engine/jobs/schema.ts.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AUDIT_SCHEMA } from '../src/engine/jobs/schema';

fs.writeFileSync(path.join(__dirname, '..', 'schema', 'audit.schema.json'), JSON.stringify(AUDIT_SCHEMA, null, 2) + '\n');
