/**
 * Writes schema/audit.schema.json from the single source in src/engine/job_schema.ts.
 * `--check` writes nothing and exits 1 when the committed file is stale (for CI).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { publishedSchemaText } from '../src/engine/job_schema';

const file = path.join(__dirname, '..', 'schema', 'audit.schema.json');
const text = publishedSchemaText();
if (process.argv.includes('--check')) {
  const current = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  if (current !== text) {
    process.stderr.write(`${path.relative(process.cwd(), file)} is out of date: run npx tsx scripts/gen-schema.ts\n`);
    process.exit(1);
  }
} else {
  fs.writeFileSync(file, text);
}
