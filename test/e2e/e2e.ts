/**
 * Drives code-server (started by run.sh with the .vsix installed) in headless Chromium: opens the workspace,
 * right-clicks the victim in models/, runs "Purify Model..." through the set-up flow (embedded MNIST test and
 * auxiliary data, BadNets target 0, defense ft, GIC off and on), waits for the results panel to report the run done,
 * reads ACC/ASR from the grid, checks that the status bar named the job process's backends (WebAssembly + ONNX
 * Runtime) while the job ran and saves screenshots (the panel, the results table sorted by DER, the model diff);
 * then purifies the PyTorch checkpoint E2E_PT (GIC off) the same way; then purifies E2E_POISONED_MODEL (a copy of
 * the victim) against the user's own poisoned set, chosen in the set-up flow as "I have triggered test images"
 * (data/triggered_x.npy with its paired true labels), and checks the job file, the baseline ASR of the panel and
 * the attack the run's results.json names; last, screenshots the Calibration side view. Exits non-zero on any
 * failure, with a screenshot.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { chromium, type FrameLocator, type Locator, type Page } from 'playwright-core';

const url = required('E2E_URL');
const workspace = required('E2E_WORKSPACE');
const artifacts = required('E2E_ARTIFACTS');
const modelName = process.env.E2E_MODEL ?? 'victim.pt';
/** A PyTorch .pt in models/ purified second (GIC off), or none. */
const ptName = process.env.E2E_PT;
/** A copy of the victim in models/ purified third, against data/triggered_x.npy (run.sh writes both), or none. */
const poisonedModel = process.env.E2E_POISONED_MODEL;
/** How many of the poisoned set's images are not of the target class (make-poisoned-set.ts prints it). */
const poisonedCount = process.env.E2E_POISONED_COUNT ? Number(process.env.E2E_POISONED_COUNT) : undefined;
const JOB_TIMEOUT_MS = Number(process.env.E2E_JOB_TIMEOUT_MS ?? 15 * 60_000);

function required(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run test/e2e/run.sh)`);
  return v;
}

function step(s: string): void {
  process.stderr.write(`[e2e] ${s}\n`);
}

/** Answers one quick-input step: waits for its title, optionally filters, then accepts with Enter. */
async function quickInput(page: Page, titlePart: RegExp, filter?: string): Promise<void> {
  const widget = page.locator('.quick-input-widget');
  await widget.locator('.quick-input-title', { hasText: titlePart }).waitFor({ state: 'visible', timeout: 30_000 });
  const input = widget.locator('.quick-input-box input');
  if (filter !== undefined) {
    await input.fill(filter);
    // Let the list filter before accepting the first match.
    await page.waitForTimeout(400);
  }
  await input.press('Enter');
  await page.waitForTimeout(300);
}

/**
 * Right-clicks `target` until its context menu lists `label`. The workbench can render the Explorer before the
 * extension's contributions are registered (a cold start on a busy machine), and a menu opened then never gains
 * them: close it and try again rather than wait on a menu that will not change.
 */
async function openContextMenu(page: Page, target: Locator, label: string, name: string): Promise<Locator> {
  const item = page.locator('.context-view .action-item', { hasText: label });
  const deadline = Date.now() + 180_000;
  for (let attempt = 1; ; attempt++) {
    step(`right-clicking models/${name} (attempt ${attempt})`);
    await target.click({ button: 'right' });
    try {
      await item.waitFor({ state: 'visible', timeout: 10_000 });
      return item;
    } catch (e) {
      const shown = (await page.locator('.context-view .action-item').allTextContents().catch(() => [])).map((t) => t.trim()).filter(Boolean);
      step(`the menu lists: ${shown.join(' | ') || '(nothing)'}`);
      await page.screenshot({ path: path.join(artifacts, `context-menu-attempt-${attempt}.png`) }).catch(() => undefined);
      if (Date.now() > deadline) throw e;
      await page.keyboard.press('Escape');
      await page.waitForTimeout(5_000);
    }
  }
}

async function panelFrame(page: Page): Promise<FrameLocator> {
  // VS Code hosts each webview in an outer iframe and the page itself in #active-frame inside it; the newest
  // panel is the last one.
  const outer = page.frameLocator('iframe.webview.ready').last();
  const f = outer.frameLocator('#active-frame');
  await f.locator('body[data-view="results"]').waitFor({ state: 'attached', timeout: 60_000 });
  return f;
}

/**
 * Opens the Backdoor Audit side bar and screenshots its Calibration view (best effort: a missing view is
 * logged, the check above is what passes or fails the run).
 */
async function calibrationView(page: Page): Promise<void> {
  try {
    await page.locator('.activitybar a.action-label[aria-label^="Backdoor Audit"]').first().click();
    const frames = page.locator('iframe.webview.ready');
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      for (let i = (await frames.count()) - 1; i >= 0; i--) {
        const f = page.frameLocator('iframe.webview.ready').nth(i).frameLocator('#active-frame');
        if ((await f.locator('body[data-view="calibration"]').count()) === 0) continue;
        await f.locator('.calibration-card').first().waitFor({ state: 'visible', timeout: 30_000 });
        await page.locator('.part.sidebar').screenshot({ path: path.join(artifacts, 'calibration.png') });
        step(`calibration view: ${await f.locator('.calibration-card').count()} aux sets`);
        return;
      }
      await page.waitForTimeout(1000);
    }
    step('calibration view: not found');
  } catch (e) {
    step(`calibration view: ${(e as Error).message.split('\n')[0]}`);
  }
}

async function main(): Promise<void> {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.on('pageerror', (e) => step(`page error: ${e.message}`));
  try {
    step(`opening ${url}`);
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    await page.locator('.monaco-workbench').waitFor({ timeout: 120_000 });

    // The Explorer: expand models/ and right-click the checkpoint.
    const rows = page.locator('.explorer-folders-view .monaco-list-row');
    await rows.first().waitFor({ timeout: 60_000 });
    const folder = rows.filter({ hasText: /^models$/ });
    if ((await rows.filter({ hasText: modelName }).count()) === 0) await folder.click();
    const model = rows.filter({ hasText: modelName });
    await model.waitFor({ timeout: 30_000 });
    const item = await openContextMenu(page, model, 'Purify Model...', modelName);
    await page.screenshot({ path: path.join(artifacts, 'context-menu.png') });
    await item.click();

    step('answering the set-up flow');
    await quickInput(page, /test data/, 'Embedded MNIST');
    await quickInput(page, /training data/, 'No training data');
    await quickInput(page, /attack to test against/, 'badnets');
    await quickInput(page, /attack target class/);
    await quickInput(page, /auxiliary data/); // "unseen" is preselected
    await quickInput(page, /data for the "unseen"/, 'Embedded MNIST');
    await quickInput(page, /images per class/, '20');
    await quickInput(page, /defenses/); // "ft" is preselected
    await quickInput(page, /Guided Input Calibration/, 'both');

    const job = path.join(workspace, 'models', 'audit.json');
    for (let i = 0; i < 50 && !fs.existsSync(job); i++) await page.waitForTimeout(200);
    if (!fs.existsSync(job)) throw new Error('the set-up flow wrote no audit.json');
    step(`audit.json: ${fs.readFileSync(job, 'utf8').replace(/\s+/g, ' ')}`);

    step('waiting for the results panel');
    const panel = await panelFrame(page);
    await page.screenshot({ path: path.join(artifacts, 'running.png') });
    const status = panel.locator('.status-text');
    const deadline = Date.now() + JOB_TIMEOUT_MS;
    const statusSeen: string[] = [];
    for (;;) {
      const text = (await status.textContent({ timeout: 10_000 }).catch(() => '')) ?? '';
      const bar = await statusBarText(page);
      if (bar && bar !== statusSeen[statusSeen.length - 1]) statusSeen.push(bar);
      if (/^Done/.test(text)) break;
      if (/^(Failed|Cancelled|Interrupted)/.test(text)) throw new Error(`the job ended: ${text}`);
      if (Date.now() > deadline) throw new Error(`the job did not finish in time (last status: ${text})`);
      await page.waitForTimeout(2000);
    }

    const baseline = (await panel.locator('p.baseline').textContent()) ?? '';
    const ftRow = panel.locator('table.grid tbody tr', { has: panel.locator('td.defense', { hasText: /^ft$/ }) }).first();
    const cells = (await ftRow.locator('td').allTextContents()).map((t) => t.trim());
    step(`baseline: ${baseline}`);
    step(`ft row: ${cells.join(' | ')}`);
    const [acc, asr] = cells.slice(1, 3).map((t) => Number(t.replace('%', '')));
    if (!(acc >= 0 && acc <= 100 && asr >= 0 && asr <= 100)) throw new Error(`ACC/ASR not read from the panel: ${cells.join(' | ')}`);
    const m = /ASR ([\d.]+)%/.exec(baseline);
    if (!m) throw new Error(`no baseline in the panel: ${baseline}`);
    fs.writeFileSync(path.join(artifacts, 'panel.json'), JSON.stringify({ baseline, ft: { acc, asr }, baselineAsr: Number(m[1]) }, null, 2));

    // With GIC both: the calibrated side of the grid and the x / g(x) gallery are filled in.
    const gicAcc = Number(cells[6]?.replace('%', ''));
    if (!(gicAcc >= 0 && gicAcc <= 100)) throw new Error(`no ACC with GIC in the ft row: ${cells.join(' | ')}`);
    const images = await panel.locator('#gallery canvas.gallery-image').count();
    if (images < 3) throw new Error(`the GIC gallery shows ${images} images`);
    step(`ft with GIC: ACC ${gicAcc}%; gallery: ${images} images`);

    // The panel alone, for the README; the gallery; then the whole window.
    const frameEl = page.locator('iframe.webview.ready').last();
    await frameEl.screenshot({ path: path.join(artifacts, 'panel.png') });
    await panel.locator('#gallery').screenshot({ path: path.join(artifacts, 'gallery.png') });
    await page.screenshot({ path: path.join(artifacts, 'window.png') });
    step(`ACC ${acc}% ASR ${asr}% (baseline ASR ${m[1]}%)`);
    // The status bar item shows only while jobs run: its texts were sampled while this job ran.
    checkStatusBar(statusSeen);
    step(`status bar after the job: ${(await statusBarText(page)) || '(hidden)'}`);

    // The results table sorted by DER, and the model diff of the first purified model (for the README).
    const table = panel.locator('#results-table');
    await table.locator('th button', { hasText: /^DER/ }).click();
    await table.locator('th[aria-sort="descending"]').waitFor({ state: 'attached', timeout: 10_000 });
    await table.screenshot({ path: path.join(artifacts, 'results-table.png') });
    const layers = await panel.locator('#model-diff tbody tr').count();
    if (layers < 2) throw new Error(`the model diff lists ${layers} layers`);
    await panel.locator('#model-diff').screenshot({ path: path.join(artifacts, 'model-diff.png') });
    step(`results table sorted by DER; model diff: ${layers} layers`);
    if (ptName) await purifyPt(page, ptName);
    if (poisonedModel) await purifyWithPoisonedSet(page, poisonedModel);
    // Last, as it adds a webview of its own: the Calibration side view following the open run.
    await calibrationView(page);
  } catch (e) {
    await page.screenshot({ path: path.join(artifacts, 'failure.png') }).catch(() => undefined);
    throw e;
  } finally {
    await browser.close();
  }
}

/** The Backdoor Audit status bar item's text now, or '' while it is hidden (it shows only while jobs run). */
async function statusBarText(page: Page): Promise<string> {
  const item = page.locator('.statusbar-item', { hasText: /(CPU|GPU) \(/ }).first();
  if ((await item.count().catch(() => 0)) === 0) return '';
  return ((await item.textContent({ timeout: 2_000 }).catch(() => '')) ?? '').trim();
}

/**
 * The status bar item names what the job process computes with, as its messages report it: a job on the CPU
 * trains on WebAssembly and evaluates with ONNX Runtime (run.sh checks the latter in the log), so the item says
 * both. It shows only while jobs run, so `seen` holds its texts sampled while the job ran; if it was never seen
 * that is reported, not failed (the check is of its text).
 */
function checkStatusBar(seen: readonly string[]): void {
  if (seen.length === 0) {
    step('warning: no Backdoor Audit item seen in the status bar while the job ran; its text was not checked');
    return;
  }
  step(`status bar while the job ran: ${seen.join(' → ')}`);
  const last = seen[seen.length - 1];
  if (!seen.some((t) => /CPU \(WebAssembly \+ ONNX Runtime\)/.test(t))) throw new Error(`the status bar names "${last}", not the job process's WebAssembly + ONNX Runtime`);
}

/** Purifies a PyTorch checkpoint with ft, GIC off, and reads its ft row from the newest results panel. */
async function purifyPt(page: Page, name: string): Promise<void> {
  const rows = page.locator('.explorer-folders-view .monaco-list-row');
  const model = rows.filter({ hasText: name });
  await model.waitFor({ timeout: 30_000 });
  const item = await openContextMenu(page, model, 'Purify Model...', name);
  await item.click();
  // With a results panel open, the menu lies over the webview's iframe and a click on its item can go unseen
  // (the menu stays open, the item highlighted): then choose the highlighted item with the keyboard.
  await page.waitForTimeout(1_000);
  if (await item.isVisible().catch(() => false)) {
    step('the menu is still open after the click: choosing the item with Enter');
    await item.hover();
    await page.keyboard.press('Enter');
  }
  step(`answering the set-up flow for ${name}`);
  await quickInput(page, /test data/, 'Embedded MNIST');
  await quickInput(page, /training data/, 'No training data');
  await quickInput(page, /attack to test against/, 'badnets');
  await quickInput(page, /attack target class/);
  await quickInput(page, /auxiliary data/);
  await quickInput(page, /data for the "unseen"/, 'Embedded MNIST');
  await quickInput(page, /images per class/, '10');
  await quickInput(page, /defenses/);
  await quickInput(page, /Guided Input Calibration/, 'off');
  const panel = await panelFrame(page);
  const status = panel.locator('.status-text');
  const deadline = Date.now() + JOB_TIMEOUT_MS;
  for (;;) {
    const text = (await status.textContent({ timeout: 10_000 }).catch(() => '')) ?? '';
    if (/^Done/.test(text)) break;
    if (/^(Failed|Cancelled|Interrupted)/.test(text)) throw new Error(`the job on ${name} ended: ${text}`);
    if (Date.now() > deadline) throw new Error(`the job on ${name} did not finish in time (last status: ${text})`);
    await page.waitForTimeout(2000);
  }
  const ftRow = panel.locator('table.grid tbody tr', { has: panel.locator('td.defense', { hasText: /^ft$/ }) }).first();
  const cells = (await ftRow.locator('td').allTextContents()).map((t) => t.trim());
  const acc = Number(cells[1]?.replace('%', ''));
  if (!(acc >= 0 && acc <= 100)) throw new Error(`ACC of ${name} not read from the panel: ${cells.join(' | ')}`);
  await page.screenshot({ path: path.join(artifacts, 'window-pt.png') });
  step(`${name}: ft row ${cells.join(' | ')}`);
}

/**
 * Purifies `name` with ft (GIC off) against the user's triggered images: the set-up flow's "I have triggered test
 * images", data/triggered_x.npy from the workspace, its true labels data/triggered_y.npy (offered first, beside
 * "No true labels"). Checks the job file the flow wrote, the panel's baseline (the victim's backdoor fires on the
 * set) and results.json's attack (a poisoned set, with true labels, counting the non-target images).
 */
async function purifyWithPoisonedSet(page: Page, name: string): Promise<void> {
  const rows = page.locator('.explorer-folders-view .monaco-list-row');
  const model = rows.filter({ hasText: name });
  await model.waitFor({ timeout: 30_000 });
  const item = await openContextMenu(page, model, 'Purify Model...', name);
  await item.click();
  // As for the .pt: with a results panel open, a click on the menu item can go unseen.
  await page.waitForTimeout(1_000);
  if (await item.isVisible().catch(() => false)) {
    step('the menu is still open after the click: choosing the item with Enter');
    await item.hover();
    await page.keyboard.press('Enter');
  }
  step(`answering the set-up flow for ${name} with the poisoned set data/triggered_x.npy`);
  await quickInput(page, /test data/, 'Embedded MNIST');
  await quickInput(page, /training data/, 'No training data');
  await quickInput(page, /attack to test against/, 'triggered test images');
  await quickInput(page, /— triggered test images/, 'triggered_x');
  await page.screenshot({ path: path.join(artifacts, 'poisoned-labels-step.png') });
  await quickInput(page, /true labels of triggered_x\.npy/, 'triggered_y');
  await quickInput(page, /attack target class/); // 0, the victim's target
  await quickInput(page, /auxiliary data/);
  await quickInput(page, /data for the "unseen"/, 'Embedded MNIST');
  await quickInput(page, /images per class/, '10');
  await quickInput(page, /defenses/);
  await quickInput(page, /Guided Input Calibration/, 'off');

  const stem = name.replace(/\.[^.]+$/, '');
  const jobFile = path.join(workspace, 'models', `${stem}.audit.json`);
  for (let i = 0; i < 50 && !fs.existsSync(jobFile); i++) await page.waitForTimeout(200);
  if (!fs.existsSync(jobFile)) throw new Error(`the set-up flow wrote no ${path.basename(jobFile)}`);
  const job = JSON.parse(fs.readFileSync(jobFile, 'utf8'));
  step(`${path.basename(jobFile)}: attack ${JSON.stringify(job.attack)}`);
  const want = { type: 'poisoned-set', target: 0, data: { path: '../data/triggered_x.npy', format: 'npy', labels: '../data/triggered_y.npy' } };
  if (JSON.stringify(job.attack) !== JSON.stringify(want)) throw new Error(`the job's attack is ${JSON.stringify(job.attack)}, expected ${JSON.stringify(want)}`);

  const panel = await panelFrame(page);
  const status = panel.locator('.status-text');
  const deadline = Date.now() + JOB_TIMEOUT_MS;
  for (;;) {
    const text = (await status.textContent({ timeout: 10_000 }).catch(() => '')) ?? '';
    if (/^Done/.test(text)) break;
    if (/^(Failed|Cancelled|Interrupted)/.test(text)) throw new Error(`the job on ${name} with the poisoned set ended: ${text}`);
    if (Date.now() > deadline) throw new Error(`the job on ${name} with the poisoned set did not finish in time (last status: ${text})`);
    await page.waitForTimeout(2000);
  }
  const baseline = (await panel.locator('p.baseline').textContent()) ?? '';
  const ftRow = panel.locator('table.grid tbody tr', { has: panel.locator('td.defense', { hasText: /^ft$/ }) }).first();
  const cells = (await ftRow.locator('td').allTextContents()).map((t) => t.trim());
  step(`${name} with the poisoned set: baseline ${baseline}; ft row ${cells.join(' | ')}`);
  const asr = /ASR ([\d.]+)%/.exec(baseline);
  const ra = /RA ([\d.]+)%/.exec(baseline);
  // The victim's BadNets backdoor fires on the user's triggered digits; true labels were given, so RA is measured.
  if (!asr || Number(asr[1]) < 50) throw new Error(`baseline ASR on the poisoned set is not that of a backdoored model: ${baseline}`);
  if (!ra) throw new Error(`no RA in the baseline although the poisoned set has true labels: ${baseline}`);
  const [acc, ftAsr] = cells.slice(1, 3).map((t) => Number(t.replace('%', '')));
  if (!(acc >= 0 && acc <= 100 && ftAsr >= 0 && ftAsr <= 100)) throw new Error(`ACC/ASR of ${name} not read from the panel: ${cells.join(' | ')}`);

  // The run's results.json (models/audit-out/<stem>-<time>/) names the attack it measured.
  const outRoot = path.join(workspace, 'models', 'audit-out');
  const runs = (fs.existsSync(outRoot) ? fs.readdirSync(outRoot) : []).filter((d) => d.startsWith(`${stem}-`) && fs.existsSync(path.join(outRoot, d, 'results.json'))).sort();
  if (runs.length === 0) throw new Error(`no results.json under ${outRoot} for ${stem}`);
  const results = JSON.parse(fs.readFileSync(path.join(outRoot, runs[runs.length - 1], 'results.json'), 'utf8'));
  const attack = results.attack ?? {};
  step(`results.json attack: ${JSON.stringify(attack)}`);
  if (attack.type !== 'poisoned-set' || attack.trueLabels !== true) throw new Error(`results.json names the attack ${JSON.stringify(attack)}`);
  if (poisonedCount !== undefined && attack.images !== poisonedCount) throw new Error(`ASR counted ${attack.images} images, expected the ${poisonedCount} not of the target class`);
  fs.writeFileSync(path.join(artifacts, 'panel-poisoned.json'), JSON.stringify({ baseline, ft: { acc, asr: ftAsr }, attack }, null, 2));
  await page.screenshot({ path: path.join(artifacts, 'window-poisoned.png') });
}

main().catch((e) => {
  process.stderr.write(`[e2e] FAILED: ${(e as Error).message}\n`);
  process.exit(1);
});
