/**
 * Screenshots of a report.html's views for the README: the results table sorted by DER, the model diff of the
 * first purified model and, when the run detected a trigger, Neural Cleanse's anomaly chart with the reversed
 * triggers. report.html is the panel's own bundle, so these are the panel's views (the e2e saves the same views
 * from VS Code itself). Headless Debian Chromium through playwright-core, as the e2e uses.
 *
 *   npx tsx scripts/report-screenshots.ts DIR/report.html OUT_DIR [--only results-table,model-diff,detection]
 */
import * as path from 'node:path';
import { chromium } from 'playwright-core';

async function main(): Promise<void> {
  const [report, outDir] = process.argv.slice(2);
  const onlyArg = process.argv.indexOf('--only');
  const only = onlyArg > 0 ? new Set(process.argv[onlyArg + 1].split(',')) : undefined;
  if (!report || !outDir) throw new Error('usage: report-screenshots.ts REPORT.html OUT_DIR [--only a,b]');
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, colorScheme: 'light' });
    await page.goto(`file://${path.resolve(report)}`);
    await page.locator('#grid table').first().waitFor();
    const want = (name: string) => !only || only.has(name);
    if (want('results-table')) {
      const table = page.locator('#results-table');
      await table.locator('th button', { hasText: /^DER/ }).click();
      await table.screenshot({ path: path.join(outDir, 'results-table.png') });
    }
    if (want('model-diff') && (await page.locator('#model-diff:not([hidden])').count())) {
      // The second choice when there is one: the first is often a fine-tuned model, the pruning shows better.
      const options = await page.locator('#model-diff select option').allTextContents();
      const pruned = options.find((o) => /^clp /.test(o));
      if (pruned) await page.locator('#model-diff select').selectOption({ label: pruned });
      await page.locator('#model-diff').screenshot({ path: path.join(outDir, 'model-diff.png') });
    }
    if (want('detection') && (await page.locator('#detection:not([hidden])').count())) {
      await page.locator('#detection').screenshot({ path: path.join(outDir, 'reversed-triggers.png') });
    }
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  process.stderr.write(`error: ${(e as Error).message}\n`);
  process.exit(1);
});
