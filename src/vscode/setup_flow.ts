/**
 * The guided job set-up: numbered quick-input steps (test data, training data, attack, auxiliary sets,
 * defenses, GIC) that end in an `audit.json` next to the model. Data sets found in the workspace are offered
 * first so that a typical set-up is a handful of Enter presses; file dialogs remain for anything else. Back
 * returns to the previous step with the earlier answers as its defaults; Escape at any step abandons the flow
 * and writes nothing.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { settings } from './config';
import { BACK, inputText, pickMany, pickOne, type Answer, type StepTitle } from './quick_steps';
import {
  type AttackAnswer,
  DEFENSES,
  OOD_SHIFTS,
  auxName,
  buildJob,
  checkAnswers,
  guessFormat,
  isLabelsNpy,
  jobModelPath,
  pairLabels,
  type AuxAnswer,
  type AuxType,
  type DataSource,
  type JobAnswers,
} from './job_spec';

export type FlowKind = 'purify' | 'evaluate' | 'calibrate';

/** Folders and files the user marked with "Use as Auxiliary Data", remembered per workspace. */
export const AUX_SOURCES_KEY = 'backdoorAudit.auxSources';

export const MODEL_GLOB = '**/{*.pt,*.pth,*.onnx,*.safetensors,model.json}';
const DATA_GLOB = '**/{*.npy,*.npz,*-idx3-ubyte,*-idx3-ubyte.gz,*.idx3-ubyte,data_batch_*.bin,test_batch.bin}';
const EXCLUDE = '{**/node_modules/**,**/.git/**}';

interface DataItem extends vscode.QuickPickItem {
  source?: DataSource;
  browse?: 'files' | 'folder';
  skip?: boolean;
}

const TITLES: Record<FlowKind, string> = {
  purify: 'Purify Model',
  evaluate: 'Evaluate Model',
  calibrate: 'Calibrate Auxiliary Data (GIC)',
};

/**
 * A data source for a path: format from the name, labels paired for .npy (asked when no pair is found; Back
 * from that question returns BACK to the caller's own question). With `labelsOptional` (a poisoned set: its
 * images' true labels, if the user has them) a .npy's labels are always asked, the paired file first and "No
 * true labels" beside it; the other formats decide for themselves (an .npz without a 1-D array has none, image
 * folders, IDX and CIFAR batches always carry them).
 */
export async function sourceFor(file: string, isDir: boolean, st: StepTitle, opts: { labelsOptional?: boolean } = {}): Promise<Answer<DataSource>> {
  const format = guessFormat(file, isDir);
  if (!format) {
    void vscode.window.showErrorMessage(`Cannot tell the data format of ${path.basename(file)}: use an image folder, .npy/.npz, IDX or CIFAR-10 binary files.`);
    return undefined;
  }
  const src: DataSource = { path: file, format };
  if (format === 'npy') {
    const siblings = safeReaddir(path.dirname(file)).map((n) => path.join(path.dirname(file), n));
    const paired = pairLabels(file, siblings);
    if (paired && !opts.labelsOptional) src.labels = paired;
    else {
      type Item = vscode.QuickPickItem & { file?: string; none?: true; browse?: true };
      const others = siblings.filter((s) => s.endsWith('.npy') && s !== file && s !== paired);
      const items: Item[] = [
        ...(paired ? [{ label: path.basename(paired), description: 'found next to the images', detail: paired, file: paired }] : []),
        ...(opts.labelsOptional ? [{ label: '$(circle-slash) No true labels', description: 'ASR counts every image (those of the target class too); RA is n/a', none: true as const }] : []),
        ...others.map((o) => ({ label: path.basename(o), detail: o, file: o })),
        { label: '$(folder-opened) Browse…', browse: true as const },
      ];
      const pick = await pickOne({ ...st, title: `${st.title}: ${opts.labelsOptional ? 'true labels' : 'labels'} of ${path.basename(file)}`, back: true }, items, {
        placeHolder: opts.labelsOptional ? "The .npy with each image's true label (before the trigger), or none" : 'The .npy file with one integer label per image',
      });
      if (pick === BACK || pick === undefined) return pick;
      if (pick.none) return src;
      if (pick.file) src.labels = pick.file;
      else {
        const u = await vscode.window.showOpenDialog({ canSelectMany: false, filters: { 'NumPy arrays': ['npy'] }, title: `Labels of ${path.basename(file)}` });
        if (!u?.[0]) return BACK;
        src.labels = u[0].fsPath;
      }
    }
  }
  return src;
}

function safeReaddir(d: string): string[] {
  try {
    return fs.readdirSync(d);
  } catch {
    return [];
  }
}

function isDirectory(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** Data sets in the workspace and the ones marked as auxiliary data, as quick-pick items. */
async function dataCandidates(state: vscode.Memento): Promise<DataItem[]> {
  const items: DataItem[] = [];
  const seen = new Set<string>();
  const add = (p: string, marked: boolean) => {
    if (seen.has(p)) return;
    seen.add(p);
    const dir = isDirectory(p);
    const format = guessFormat(p, dir);
    if (!format || (format === 'npy' && isLabelsNpy(p))) return;
    items.push({
      label: `${dir ? '$(folder)' : '$(file-binary)'} ${vscode.workspace.asRelativePath(p, false)}`,
      description: `${format}${marked ? ' · marked as auxiliary data' : ''}`,
      source: { path: p, format },
    });
  };
  for (const p of state.get<string[]>(AUX_SOURCES_KEY, [])) if (fs.existsSync(p)) add(p, true);
  const found = await vscode.workspace.findFiles(DATA_GLOB, EXCLUDE, 200);
  for (const u of found.map((x) => x.fsPath).sort()) add(u, false);
  return items;
}

/** What a step ends with: go on, go back a step, or abandon the flow (nothing is written). */
type StepEnd = 'next' | 'back' | 'cancel';

/** Earlier answers, kept when the user steps back so that each question opens on what they chose before. */
interface Memory {
  testLabel?: string;
  trainLabel?: string;
  attackLabel?: string;
  poisonedLabel?: string;
  target?: string;
  alpha?: string;
  position?: string;
  howLabel?: string;
  auxLabels?: string[];
  auxDataLabels?: Record<string, string>;
  shifts?: string[];
  perClass?: string;
  defenses?: string[];
  gicMode?: string;
}

/** BACK and Escape of a step's first question end the step; anything else is the answer. */
function ended<T>(a: Answer<T>): a is typeof BACK | undefined {
  return a === BACK || a === undefined;
}
const endOf = (a: typeof BACK | undefined): StepEnd => (a === BACK ? 'back' : 'cancel');

export class SetupFlow {
  private memory: Memory = {};

  constructor(private readonly state: vscode.Memento) {}

  /**
   * One data-source question; `null` means the user chose to skip an optional step. Back from a follow-up
   * question (the labels of a .npy, a file dialog dismissed) returns to this question. `poisoned`: the user's
   * triggered images, whose labels are optional and which the embedded digits cannot be.
   */
  private async pickData(
    st: StepTitle,
    placeHolder: string,
    optional: boolean,
    remember: (label: string) => void,
    previous?: string,
    skipLabel = 'Skip',
    poisoned = false,
  ): Promise<Answer<DataSource | null>> {
    const items: DataItem[] = [];
    if (optional) items.push({ label: `$(debug-step-over) ${skipLabel}`, skip: true });
    items.push(...(await dataCandidates(this.state)));
    if (!poisoned) items.push({ label: '$(database) Embedded MNIST digits', description: 'built in: disjoint train, held-out and test splits', source: { format: 'mnist-embedded' } });
    items.push({ label: '$(folder-opened) Browse for files…', description: '.npy, .npz, IDX, CIFAR-10 .bin', browse: 'files' });
    items.push({ label: '$(folder-opened) Browse for an image folder…', description: 'one sub-folder per class', browse: 'folder' });
    for (;;) {
      const pick = await pickOne(st, items, { placeHolder, matchOnDescription: true, active: items.find((i) => i.label === previous) });
      if (ended(pick)) return pick;
      remember(pick.label);
      previous = pick.label;
      if (pick.skip) return null;
      if (pick.source?.format === 'mnist-embedded') return pick.source;
      let src: Answer<DataSource>;
      if (pick.source?.path) src = await sourceFor(pick.source.path, pick.source.format === 'imagefolder', st, { labelsOptional: poisoned });
      else {
        const uris = await vscode.window.showOpenDialog({
          canSelectMany: false,
          canSelectFiles: pick.browse === 'files',
          canSelectFolders: pick.browse === 'folder',
          title: st.title,
          defaultUri: vscode.workspace.workspaceFolders?.[0]?.uri,
        });
        // A dismissed dialog returns to the list rather than abandoning the whole set-up.
        src = uris?.[0] ? await sourceFor(uris[0].fsPath, pick.browse === 'folder', st, { labelsOptional: poisoned }) : BACK;
      }
      if (src === BACK) continue;
      return src;
    }
  }

  /**
   * Asks everything a job needs as numbered steps (test data, training data, attack, auxiliary data, defenses,
   * GIC; fewer for evaluate and calibrate) with Back; undefined when the user escaped.
   */
  async ask(kind: FlowKind, model: string): Promise<JobAnswers | undefined> {
    const s = settings(vscode.Uri.file(model));
    const t = `${TITLES[kind]}: ${path.basename(model)}`;
    const m = this.memory;
    let test: DataSource | undefined;
    let train: DataSource | undefined;
    let attack: AttackAnswer | undefined;
    let aux: AuxAnswer[] = [];
    let defenses: string[] = [];
    let mode: 'off' | 'on' | 'both' = kind === 'calibrate' ? 'on' : 'off';

    const steps: Array<(st: (what: string) => StepTitle) => Promise<StepEnd>> = [
      async (st) => {
        const r = await this.pickData(st('test data'), 'The clean test set (triggered copies are made from it for ASR)', false, (l) => (m.testLabel = l), m.testLabel);
        if (ended(r)) return endOf(r);
        test = r ?? undefined;
        return 'next';
      },
    ];
    if (kind !== 'evaluate') {
      steps.push(async (st) => {
        const r = await this.pickData(st('training data (optional)'), 'Needed for "seen" auxiliary sets and the reference embedding', true, (l) => (m.trainLabel = l), m.trainLabel, 'No training data');
        if (ended(r)) return endOf(r);
        train = r ?? undefined;
        return 'next';
      });
    }
    steps.push(async (st) => {
      const r = await this.askAttack(st, t, model);
      if (ended(r)) return endOf(r);
      attack = r;
      return 'next';
    });
    if (kind !== 'evaluate') {
      steps.push(async (st) => {
        const r = await this.askAux(st, t, train !== undefined, kind);
        if (ended(r)) return endOf(r);
        aux = r;
        return 'next';
      });
    }
    if (kind === 'purify') {
      steps.push(async (st) => {
        const items = DEFENSES.map((d) => ({ label: d.id, description: d.label.split(' — ')[1] }));
        const chosen = m.defenses ?? ['ft'];
        const picks = await pickMany(st('defenses'), items, { placeHolder: 'Each runs on every auxiliary set (fastest first)', selected: (i) => chosen.includes(i.label) });
        if (ended(picks)) return endOf(picks);
        defenses = picks.map((p) => p.label);
        m.defenses = defenses;
        return 'next';
      });
      steps.push(async (st) => {
        const items = [
          { label: 'both', description: 'every defense with raw and with calibrated auxiliary data, side by side' },
          { label: 'off', description: 'raw auxiliary data only (fastest)' },
          { label: 'on', description: 'calibrated auxiliary data only' },
        ];
        const r = await pickOne(st(`Guided Input Calibration (‖g(x) − x‖${s.gicNorm === 'inf' ? '∞' : '₂'} ≤ ${s.gicDelta})`), items, { active: items.find((i) => i.label === m.gicMode) });
        if (ended(r)) return endOf(r);
        mode = r.label as 'off' | 'on' | 'both';
        m.gicMode = r.label;
        return 'next';
      });
    }

    for (let i = 0; i < steps.length; ) {
      const st = (what: string): StepTitle => ({ title: `${t} — ${what}`, step: i + 1, totalSteps: steps.length, back: i > 0 });
      const end = await steps[i](st);
      if (end === 'cancel') return undefined;
      i = end === 'back' ? Math.max(0, i - 1) : i + 1;
    }
    if (!test || !attack) return undefined;
    return {
      model,
      test,
      train,
      attack,
      aux,
      defenses,
      gic: { mode, delta: s.gicDelta, norm: s.gicNorm },
      profile: s.profile,
      device: s.device,
    };
  }

  /**
   * What the user knows of the backdoor: their triggered images, their trigger file, a record, nothing, or a
   * built-in. Back from a follow-up question returns to the choice of attack.
   */
  private async askAttack(st: (what: string) => StepTitle, t: string, model: string): Promise<Answer<AttackAnswer>> {
    type Item = vscode.QuickPickItem & { type: AttackAnswer['type']; file?: 'image' | 'patch' | 'grids' };
    const m = this.memory;
    const items: Item[] = [
      { label: 'I have triggered test images', description: 'poisoned-set: any data format, with or without true labels', type: 'poisoned-set' },
      { label: 'I have the trigger image', description: 'BadNets patch (at a position or as a full-size mask) or Blended image', type: 'badnets', file: 'patch' },
      { label: 'I have WaNet grids', description: 'identity_grid / noise_grid (.pt or .npz)', type: 'wanet', file: 'grids' },
      ...(/\.(pt|pth)$/i.test(model) ? [{ label: 'BackdoorBench record', description: 'the model is an attack_result.pt: its bd_test is the poisoned set', type: 'record' as const }] : []),
      { label: "I don't know the trigger", description: 'ACC, Neural Cleanse detection and purification; ASR is n/a', type: 'unknown' },
      { label: 'badnets', description: 'built in: white square patch at the bottom-right corner', type: 'badnets' },
      { label: 'blended', description: 'built in: seeded noise image blended into the input', type: 'blended' },
      { label: 'sig', description: 'built in: sinusoidal signal (clean label)', type: 'sig' },
      { label: 'wanet', description: 'built in: seeded warping-based trigger', type: 'wanet' },
    ];
    const first = st('attack to test against');
    const sub = (what: string): StepTitle => ({ ...first, title: `${t} — ${what}`, back: true });
    const browse = async (what: string, filters: Record<string, string[]>) => (await vscode.window.showOpenDialog({ canSelectMany: false, filters, title: `${t} — ${what}`, defaultUri: vscode.workspace.workspaceFolders?.[0]?.uri }))?.[0]?.fsPath;
    for (;;) {
      const pick = await pickOne(first, items, { placeHolder: 'What do you know about the backdoor? (measures ASR)', active: items.find((i) => i.label === m.attackLabel) });
      if (ended(pick)) return pick;
      m.attackLabel = pick.label;
      if (pick.type === 'unknown' || pick.type === 'record') return { type: pick.type, target: 0 };
      const answer: AttackAnswer = { type: pick.type, target: 0 };
      // Each follow-up: BACK (or a dismissed file dialog) returns to the choice of attack, Escape abandons.
      let back = false;
      if (pick.type === 'poisoned-set') {
        const data = await this.pickData(
          sub('triggered test images'),
          'Images carrying the trigger: for .npy you choose their true labels or none next; an .npz without a 1-D labels array has none',
          false,
          (l) => (m.poisonedLabel = l),
          m.poisonedLabel,
          undefined,
          true,
        );
        if (data === undefined) return undefined;
        if (data === BACK || data === null) back = true;
        else answer.data = data;
      } else if (pick.file === 'patch') {
        const kinds = [
          { label: 'BadNets patch', description: 'pasted at a position you give', how: 'patch' },
          { label: 'BadNets mask image', description: "BackdoorBench's full-size trigger image: its non-zero pixels replace the input's", how: 'mask' },
          { label: 'Blended image', description: "x' = (1 - alpha) x + alpha t, t resized to the input", how: 'blend' },
        ];
        const kind = await pickOne(sub('how the trigger image is applied'), kinds, { active: kinds.find((k) => k.label === m.howLabel) });
        if (kind === undefined) return undefined;
        if (kind === BACK) continue;
        m.howLabel = kind.label;
        const image = await browse('trigger image', { Images: ['png', 'jpg', 'jpeg', 'npy'] });
        if (!image) continue;
        answer.image = image;
        if (kind.how === 'blend') {
          answer.type = 'blended';
          const alpha = await inputText(sub('blend weight alpha'), { value: m.alpha ?? '0.2', validate: (v) => (Number(v) > 0 && Number(v) <= 1 ? undefined : 'A number in (0, 1]') });
          if (alpha === undefined) return undefined;
          if (alpha === BACK) continue;
          m.alpha = alpha;
          answer.alpha = Number(alpha);
        } else if (kind.how === 'mask') answer.position = 'mask';
        else {
          const pos = await inputText(sub('patch position'), {
            value: m.position ?? 'bottom-right',
            prompt: '"x,y" of the patch\'s top-left pixel, or a corner: top-left, top-right, bottom-left, bottom-right',
            validate: (v) => (/^(\d+,\d+|top-left|top-right|bottom-left|bottom-right)$/.test(v.trim()) ? undefined : 'x,y or a corner name'),
          });
          if (pos === undefined) return undefined;
          if (pos === BACK) continue;
          m.position = pos.trim();
          answer.position = pos.trim();
        }
      } else if (pick.file === 'grids') {
        const grids = await browse('WaNet grids', { 'Grids (.pt, .npz)': ['pt', 'pth', 'npz'] });
        if (!grids) continue;
        answer.grids = grids;
      }
      if (back) continue;
      const targetText = await inputText(sub('attack target class'), {
        value: m.target ?? '0',
        prompt: 'The label the trigger forces (all-to-one)',
        validate: (v) => (/^\d+$/.test(v.trim()) ? undefined : 'A class index: 0, 1, 2, …'),
      });
      if (targetText === undefined) return undefined;
      if (targetText === BACK) continue;
      m.target = targetText.trim();
      answer.target = Number(targetText.trim());
      return answer;
    }
  }

  /** The auxiliary sets and their data; Back from a follow-up returns to the choice of sets. */
  private async askAux(st: (what: string) => StepTitle, t: string, hasTrain: boolean, kind: FlowKind): Promise<Answer<AuxAnswer[]>> {
    const m = this.memory;
    const marked = this.state.get<string[]>(AUX_SOURCES_KEY, []).filter((p) => fs.existsSync(p));
    type Item = vscode.QuickPickItem & { type: AuxType; path?: string };
    const items: Item[] = [
      ...marked.map((p) => ({ label: `external: ${path.basename(p)}`, description: vscode.workspace.asRelativePath(p, false), type: 'external' as const, path: p, picked: true })),
      { label: 'unseen', description: 'a held-out in-distribution split (choose its data next)', type: 'unseen', picked: marked.length === 0 },
      { label: 'ood', description: 'a held-out split with distribution shifts (brightness, blur, …)', type: 'ood' },
      { label: 'external', description: 'data from another source with the same labels (choose it next)', type: 'external' },
      { label: 'synthetic', description: 'images synthesized from the model itself: no data needed', type: 'synthetic' },
    ];
    if (hasTrain) items.splice(marked.length, 0, { label: 'seen', description: 'a class-balanced subset of the training data', type: 'seen' });
    // Coming back to this step: the sets chosen before are the ones checked.
    if (m.auxLabels) for (const i of items) i.picked = m.auxLabels.includes(i.label);
    const first = st('auxiliary data');
    const sub = (what: string): StepTitle => ({ ...first, title: `${t} — ${what}`, back: true });
    outer: for (;;) {
      const picks = await pickMany(first, items, { placeHolder: kind === 'calibrate' ? 'The sets to calibrate with GIC' : 'The clean data each defense gets; compare several kinds' });
      if (ended(picks)) return picks;
      m.auxLabels = picks.map((p) => p.label);
      for (const i of items) i.picked = m.auxLabels.includes(i.label);
      const used = new Set<string>();
      const out: AuxAnswer[] = [];
      const dataLabels = (m.auxDataLabels ??= {});
      for (const p of picks) {
        if (p.path) {
          const src = await sourceFor(p.path, isDirectory(p.path), sub(`data of ${path.basename(p.path)}`));
          if (src === undefined) return undefined;
          if (src === BACK) continue outer;
          out.push({ name: auxName('external', used, path.basename(p.path).replace(/\.[^.]+$/, '')), type: 'external', source: src });
          continue;
        }
        if (p.type === 'seen' || p.type === 'synthetic') {
          out.push({ name: auxName(p.type, used), type: p.type });
          continue;
        }
        const src = await this.pickData(
          sub(`data for the "${p.type}" auxiliary set`),
          p.type === 'external' ? 'Clean images from another source' : 'A held-out split the model never saw',
          false,
          (l) => (dataLabels[p.type] = l),
          dataLabels[p.type],
        );
        if (src === undefined) return undefined;
        if (src === BACK || src === null) continue outer;
        if (p.type === 'ood') {
          const chosen = m.shifts ?? ['brightness'];
          const shifts = await pickMany(sub('distribution shifts (one auxiliary set each)'), OOD_SHIFTS.map((x) => ({ label: x })), { selected: (i) => chosen.includes(i.label) });
          if (shifts === undefined) return undefined;
          if (shifts === BACK) continue outer;
          m.shifts = shifts.map((x) => x.label);
          for (const sh of shifts) out.push({ name: auxName('ood', used, sh.label), type: 'ood', source: src, shift: sh.label as (typeof OOD_SHIFTS)[number] });
        } else {
          out.push({ name: auxName(p.type, used), type: p.type, source: src });
        }
      }
      // The paper's question is how little clean data suffices; and a small held-out split may not hold the
      // default (5% of the training set), so the size is asked, with the engine's default when left empty.
      const size = await inputText(sub('images per class in each auxiliary set'), {
        prompt: 'Leave empty for the default: 5% of the training set, class-balanced',
        value: m.perClass ?? '',
        validate: (v) => (v.trim() === '' || /^[1-9]\d*$/.test(v.trim()) ? undefined : 'A positive whole number, or empty'),
      });
      if (size === undefined) return undefined;
      if (size === BACK) continue;
      m.perClass = size.trim();
      if (size.trim()) for (const a of out) a.perClass = Number(size.trim());
      return out;
    }
  }

  /**
   * Where to write the job: `audit.json` next to the model; when one exists for the same model the user
   * confirms replacing it, when it belongs to another model `<model>.audit.json` is used instead.
   */
  async chooseJobPath(model: string): Promise<string | undefined> {
    const dir = path.dirname(model);
    const plain = path.join(dir, 'audit.json');
    const named = path.join(dir, `${path.basename(model).replace(/\.(pt|pth|onnx|safetensors|json)$/i, '')}.audit.json`);
    if (!fs.existsSync(plain)) return plain;
    let owner: string | undefined;
    try {
      owner = jobModelPath(plain, JSON.parse(fs.readFileSync(plain, 'utf8')));
    } catch {
      owner = undefined;
    }
    const target = owner === path.resolve(model) ? plain : named;
    if (!fs.existsSync(target)) return target;
    const replace = `Replace ${path.basename(target)}`;
    const choice = await vscode.window.showWarningMessage(`${path.basename(target)} already exists next to ${path.basename(model)}.`, { modal: true }, replace);
    return choice === replace ? target : undefined;
  }

  /** The whole flow: ask, check, write. Returns the job file written, or undefined. */
  async run(kind: FlowKind, model: string): Promise<string | undefined> {
    const answers = await this.ask(kind, model);
    if (!answers) return undefined;
    const problems = checkAnswers(answers);
    if (problems.length) {
      void vscode.window.showErrorMessage(`The job is incomplete: ${problems.join('; ')}.`);
      return undefined;
    }
    const jobPath = await this.chooseJobPath(model);
    if (!jobPath) return undefined;
    const job = buildJob(answers, jobPath);
    fs.writeFileSync(jobPath, JSON.stringify(job, null, 2) + '\n');
    return jobPath;
  }
}
