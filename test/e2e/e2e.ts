/**
 * Drives code-server (started by run.sh with the .vsix installed) in headless Chromium: opens the workspace,
 * right-clicks the victim in models/, runs "Purify Model..." through the set-up flow (embedded MNIST test and
 * auxiliary data, BadNets target 0, defense ft, GIC off and on), waits for the results panel to report the run done,
 * reads ACC/ASR from the grid, checks that the status bar named the job process's backends (WebAssembly + ONNX
 * Runtime) while the job ran and saves screenshots (the panel, the results table sorted by DER, the model diff);
 * then purifies the PyTorch checkpoint E2E_PT (GIC off) the same way; then purifies E2E_POISONED_MODEL (a copy of
 * the victim) against the user's own poisoned set, chosen in the set-up flow as "I have triggered test images"
 * (data/triggered_x.npy with its paired true labels), and checks the job file, the baseline ASR of the panel and
 * the attack the run's results.json names; then closes the editors, opens the Get Started walkthrough and runs its
 * demo step (Run Demo, on the job run.sh put in backdoor-audit-demo/: ft and NC, two aux sets, GIC off and on, two
 * seeds), checks its panel's ACC/ASR rows (mean ± std), the mean-over-seeds chart and NC's reversed trigger of every
 * class, and screenshots them; last, screenshots the Calibration side view following that run. Exits non-zero on
 * any failure, with a screenshot. The webviews' console errors and failed requests go to browser-console.log in
 * the artifacts; a results panel that stays blank is reported with what its frame holds.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { chromium, type ElementHandle, type Frame, type FrameLocator, type Locator, type Page } from 'playwright-core';

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
 * Opens the Backdoor Audit side bar and screenshots its Calibration view, which follows the run shown last: the
 * demo's, calibrated on both of its aux sets (a run with GIC off, such as the poisoned set's, has no cards to show).
 */
async function calibrationView(page: Page, auxSets: number): Promise<void> {
  await page.locator('.activitybar a.action-label[aria-label^="Backdoor Audit"]').first().click();
  const frames = page.locator('iframe.webview.ready');
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    for (let i = (await frames.count()) - 1; i >= 0; i--) {
      const f = page.frameLocator('iframe.webview.ready').nth(i).frameLocator('#active-frame');
      if ((await f.locator('body[data-view="calibration"]').count()) === 0) continue;
      await f.locator('.calibration-card').nth(auxSets - 1).waitFor({ state: 'visible', timeout: 30_000 });
      const cards = await f.locator('.calibration-card').count();
      if (cards !== auxSets) throw new Error(`the Calibration view shows ${cards} aux sets, expected ${auxSets}`);
      // A wider side bar for the picture: drag its sash (on its right edge) to the right.
      const bar = await page.locator('.part.sidebar').boundingBox();
      if (bar && bar.width < 480) {
        await page.mouse.move(bar.x + bar.width, bar.y + bar.height / 2);
        await page.mouse.down();
        await page.mouse.move(bar.x + 480, bar.y + bar.height / 2, { steps: 10 });
        await page.mouse.up();
        await page.waitForTimeout(1000);
      }
      // The Calibration pane alone (the Past Runs pane above it is mostly empty space in a tall window).
      const pane = page.locator('.part.sidebar .pane', { has: page.locator('.pane-header', { hasText: /^\s*Calibration/i }) });
      await ((await pane.count()) === 1 ? pane : page.locator('.part.sidebar')).screenshot({ path: path.join(artifacts, 'calibration.png') });
      step(`calibration view: ${(await f.locator('h2').first().textContent())?.trim()}; ${cards} aux sets`);
      return;
    }
    await page.waitForTimeout(1000);
  }
  throw new Error('the Calibration view did not appear in the Backdoor Audit side bar');
}

/** Closes the editor tab titled `title` (its close button shows on hover); a tab already gone is no error. */
async function closeTab(page: Page, title: string): Promise<void> {
  const tab = page.locator('.tabs-container .tab', { hasText: title });
  if ((await tab.count()) === 0) return;
  await tab.first().hover();
  await tab.first().locator('.tab-actions .action-label').first().click();
  await tab.first().waitFor({ state: 'detached', timeout: 10_000 });
}

/** Types `filter` into the open quick pick and clicks the first row whose text contains `label`. */
async function pickRow(page: Page, label: string, filter = label): Promise<void> {
  const input = page.locator('.quick-input-widget .quick-input-box input');
  await input.waitFor({ state: 'visible', timeout: 10_000 });
  await input.fill(filter);
  const row = page.locator('.quick-input-widget .quick-input-list .monaco-list-row', { hasText: label }).first();
  await row.waitFor({ state: 'visible', timeout: 10_000 });
  await row.click();
  await page.waitForTimeout(500);
}

/** Runs a Command Palette command by its exact title. */
async function paletteCommand(page: Page, title: string): Promise<void> {
  // Focus the workbench first: a key pressed while a webview has focus goes to its iframe.
  await page.locator('.part.statusbar').click({ position: { x: 2, y: 2 } });
  await page.keyboard.press('F1');
  await pickRow(page, title, `>${title}`);
}

/**
 * The results panel among the open webviews (the walkthrough's step pages are webviews too): the last one whose
 * page is the results view, as frames (a locator by position would move to another webview when the workbench
 * adds or drops one). Waits for it to appear.
 */
async function findResultsPanel(page: Page, timeoutMs: number): Promise<{ frame: Frame; element: ElementHandle }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const outer of (await page.locator('iframe.webview.ready').elementHandles()).reverse()) {
      try {
        const inner = await (await (await outer.contentFrame())?.$('#active-frame'))?.contentFrame();
        if (inner && (await inner.locator('body[data-view="results"]').count()) > 0) return { frame: inner, element: outer };
      } catch {
        // A webview whose frame was replaced while it was looked at: the next pass sees the new one.
      }
    }
    if (Date.now() > deadline) throw new Error('no results panel opened');
    await page.waitForTimeout(1000);
  }
}

/** What a webview frame holds, for a failure message: its load state, how much it drew, its scripts. */
async function frameFacts(frame: Frame): Promise<string> {
  return frame
    // An expression string: this file is compiled without the DOM's types.
    .evaluate<string>(
      "`readyState ${document.readyState}, body ${document.body ? document.body.innerHTML.length : 0} characters, ${document.scripts.length} scripts, ${document.querySelectorAll('.status').length} status elements`",
    )
    .catch((e: unknown) => `unreadable (${e instanceof Error ? e.message.split('\n')[0] : String(e)})`);
}

/** The demo's run folders and what each holds (results.json once a run ends). */
function demoRunFolders(workspace: string): string {
  const root = path.join(workspace, 'backdoor-audit-demo');
  const found: string[] = [];
  const walk = (dir: string, depth: number): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      if (!e.isDirectory() || depth > 2) continue;
      const sub = path.join(dir, e.name);
      const files = fs.readdirSync(sub).filter((f) => f.endsWith('.json'));
      if (files.length) found.push(`${path.relative(root, sub)}: ${files.join(', ')}`);
      walk(sub, depth + 1);
    }
  };
  try {
    walk(root, 0);
  } catch (e) {
    return `demo folder unreadable: ${e instanceof Error ? e.message : String(e)}`;
  }
  return found.length ? `run folders: ${found.join('; ')}` : 'no run folder with a .json file under backdoor-audit-demo/';
}

/** First number of a grid cell ("96.8% ± 0.5" or "96.8%"), or NaN. */
function cellPercent(text: string | undefined): number {
  const m = /^([\d.]+)%/.exec(text?.trim() ?? '');
  return m ? Number(m[1]) : NaN;
}

/**
 * The Get Started walkthrough "Audit a model for backdoors": its first step's Run Demo button runs the demo job
 * (backdoor-audit-demo/audit.json, put there by run.sh: ft and NC on two aux sets, GIC off and on, seeds 0 and 1).
 * Checks that the results panel opens and fills its ACC/ASR rows with means ± std over the two seeds, that the
 * ACC/ASR chart says it shows means over 2 seeds, and that NC's view shows the anomaly chart and the reversed
 * trigger of each of the 10 classes; screenshots the walkthrough, the chart and the reversed triggers.
 */
async function demoFromWalkthrough(page: Page): Promise<void> {
  // Only the demo's panel stays open: it is then the one found, and the run the Calibration view follows.
  await paletteCommand(page, 'View: Close All Editors');
  // No notification toast over the pictures (the earlier jobs' results left some).
  await paletteCommand(page, 'Notifications: Clear All Notifications');
  await paletteCommand(page, 'Welcome: Open Walkthrough...');
  // This quick pick has a placeholder and no title: choose the row.
  await pickRow(page, 'Audit a model for backdoors');
  const stepButton = page.locator('button.getting-started-step', { hasText: 'Try the demo' });
  await stepButton.waitFor({ state: 'visible', timeout: 30_000 });
  // The step's page (media/walkthrough/demo.md) is drawn in a webview beside the steps: let it load before the
  // picture (a picture without it is still taken).
  await page
    .frameLocator('.gettingStartedContainer iframe.webview.ready')
    .first()
    .frameLocator('#active-frame')
    .locator('text=backdoor-audit-demo/')
    .first()
    .waitFor({ state: 'visible', timeout: 15_000 })
    .catch(() => step('walkthrough: the step page did not load in time for the picture'));
  // The step's command link is drawn as a button (an <a role="button">) inside the step.
  const run = stepButton.locator('.button-container [role="button"]', { hasText: /^\s*Run Demo\s*$/ });
  // The first step opens expanded; select it if another one is.
  if (!(await run.isVisible().catch(() => false))) await stepButton.click();
  await run.waitFor({ state: 'visible', timeout: 10_000 });
  await page.screenshot({ path: path.join(artifacts, 'walkthrough.png') });
  step('walkthrough: Run Demo');
  await run.click();

  const demoJob = path.join(workspace, 'backdoor-audit-demo', 'audit.json');
  const demoVictim = path.join(workspace, 'backdoor-audit-demo', 'victim.safetensors');
  for (let i = 0; i < 50 && !fs.existsSync(demoVictim); i++) await page.waitForTimeout(200);
  if (!fs.existsSync(demoVictim)) throw new Error('Run Demo wrote no backdoor-audit-demo/victim.safetensors');
  const seeds: number[] = JSON.parse(fs.readFileSync(demoJob, 'utf8')).seeds;

  await findResultsPanel(page, 60_000);
  const deadline = Date.now() + JOB_TIMEOUT_MS;
  let lastLogged = 0;
  let blankSince: number | undefined;
  let reloaded = false;
  for (;;) {
    // Found again each time: VS Code may replace a webview's frames while the panel is redrawn.
    const { frame } = await findResultsPanel(page, 60_000);
    const text = (await frame.locator('.status-text').textContent({ timeout: 10_000 }).catch(() => '')) ?? '';
    if (/^Done/.test(text)) break;
    if (/^(Failed|Cancelled|Interrupted)/.test(text)) throw new Error(`the demo job ended: ${text}`);
    if (Date.now() > deadline) throw new Error(`the demo job did not finish in time (last status: ${text}; ${demoRunFolders(workspace)})`);
    // A page always draws a status line ("Waiting for the job to start…" before the host's first message), so a
    // panel without one is a page whose script has not run. The host loads such a page again after 15 s (panel.ts,
    // watchForSilence); one still blank after 90 s is reported with what the frame holds and where the job is,
    // and the webviews are reloaded once by hand (the panel is then sent the whole run again after its "ready").
    if (text === '') {
      blankSince ??= Date.now();
      if (!reloaded && Date.now() - blankSince > 90_000) {
        step(`demo: the results panel is still blank after 90 s, though its host loads a silent page again: ${await frameFacts(frame)}; ${demoRunFolders(workspace)}; reloading the webviews`);
        await paletteCommand(page, 'Developer: Reload Webviews');
        reloaded = true;
        blankSince = undefined;
      }
    } else blankSince = undefined;
    if (Date.now() - lastLogged > 30_000) {
      step(`demo: ${text.trim().slice(0, 120)}`);
      lastLogged = Date.now();
    }
    await page.waitForTimeout(2000);
  }
  // The pictures: the panel across the whole editor area (the walkthrough closed), no notification toast over it.
  await closeTab(page, 'Walkthrough: Backdoor Audit');
  await paletteCommand(page, 'Notifications: Clear All Notifications');
  const { frame: panel, element } = await findResultsPanel(page, 60_000);

  // Per aux set, a row per defense: ACC and ASR as mean ± std over the seeds, without GIC (cells 1, 2) and with
  // it (cells 6, 7; a GIC-side value carries ` *` where its paired GIC effect's 95% interval excludes zero).
  const groups = panel.locator('#grid .aux-group');
  const auxSets = await groups.count();
  if (auxSets !== 2) throw new Error(`the demo panel shows ${auxSets} aux sets, expected 2`);
  for (let g = 0; g < auxSets; g++) {
    const aux = ((await groups.nth(g).locator('h3').first().textContent()) ?? '').trim();
    for (const defense of ['ft', 'nc']) {
      const row = groups.nth(g).locator('table.grid tbody tr', { has: panel.locator('td.defense', { hasText: new RegExp(`^${defense}$`) }) }).first();
      const cells = (await row.locator('td').allTextContents()).map((t) => t.trim());
      step(`demo ${aux} ${defense}: ${cells.join(' | ')}`);
      for (const i of [1, 2, 6, 7]) {
        const v = cellPercent(cells[i]);
        const meanStd = i >= 6 ? / ± [\d.]+( \*)?$/ : / ± [\d.]+$/;
        if (!(v >= 0 && v <= 100) || !meanStd.test(cells[i])) throw new Error(`demo ${aux} ${defense}: no mean ± std in cell ${i}: ${cells.join(' | ')}`);
      }
    }
  }

  // The ACC/ASR chart: means over the seeds with their error bars.
  const chart = panel.locator('#chart');
  const note = ((await chart.locator('.chart-note').textContent()) ?? '').trim();
  if (!note.includes(`mean over ${seeds.length} seeds`)) throw new Error(`the chart's note is "${note}", not a mean over ${seeds.length} seeds`);
  step(`chart: ${note}`);
  // chart.js animates its bars in: let them settle before the picture.
  await page.waitForTimeout(1500);
  await chart.screenshot({ path: path.join(artifacts, 'figure1-e2e.png') });

  // The results table of the 16 runs sorted by DER, and the model diff of the first purified model (ft, at a
  // rate that removes the backdoor), for the README: no notification over them here, unlike after the first job.
  const table = panel.locator('#results-table');
  await table.locator('th button', { hasText: /^DER/ }).click();
  await table.locator('th[aria-sort="descending"]').waitFor({ state: 'attached', timeout: 10_000 });
  const tableRows = await table.locator('tbody tr').count();
  if (tableRows !== 16) throw new Error(`the demo's results table lists ${tableRows} runs, expected 16 (2 aux sets × 2 defenses × GIC off/on × 2 seeds)`);
  await table.screenshot({ path: path.join(artifacts, 'demo-results-table.png') });
  await page.waitForTimeout(1000);
  await panel.locator('#model-diff').screenshot({ path: path.join(artifacts, 'demo-model-diff.png') });

  // Neural Cleanse: the anomaly index chart and a reversed trigger (mask x pattern, and the mask) per class.
  const detection = panel.locator('#detection');
  await detection.waitFor({ state: 'visible', timeout: 10_000 });
  if ((await detection.locator('.anomaly-chart canvas').count()) !== 1) throw new Error('no anomaly index chart in the NC view');
  const triggers = await detection.locator('figure.reversed-trigger').count();
  const flagged = await detection.locator('figure.reversed-trigger.flagged').count();
  const canvases = await detection.locator('figure.reversed-trigger canvas').count();
  if (triggers !== 10 || canvases !== 20) throw new Error(`the NC view shows ${triggers} reversed triggers with ${canvases} images, expected 10 classes with trigger and mask each`);
  step(`NC view: ${triggers} reversed triggers, ${flagged} flagged; ${((await detection.locator('p').nth(0).textContent()) ?? '').trim().slice(-60)}`);
  // NC's section (its chart and ten trigger pairs) is taller than the window: a taller window shows it whole (an
  // element screenshot inside the webview's frames cannot scroll past the frame's visible part).
  await page.setViewportSize({ width: 1600, height: 2000 });
  await page.waitForTimeout(1500);
  await detection.screenshot({ path: path.join(artifacts, 'reversed-triggers.png') });
  await element.screenshot({ path: path.join(artifacts, 'panel-demo.png') });
}

async function main(): Promise<void> {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.on('pageerror', (e) => step(`page error: ${e.message}`));
  // The webviews' console errors and failed requests (a panel's bundle that did not load) go to a file in the
  // artifacts: the workbench logs many of its own.
  const browserLog = fs.createWriteStream(path.join(artifacts, 'browser-console.log'));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') browserLog.write(`${new Date().toISOString()} ${m.type()} ${m.location().url}: ${m.text()}\n`);
  });
  page.on('requestfailed', (r) => browserLog.write(`${new Date().toISOString()} request failed ${r.url()}: ${r.failure()?.errorText ?? ''}\n`));
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
    await demoFromWalkthrough(page);
    // Last, as it adds a webview of its own: the Calibration side view following the demo's run.
    await calibrationView(page, 2);
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
