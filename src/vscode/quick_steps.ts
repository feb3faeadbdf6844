/**
 * One question of a multi-step quick input: a pick, a multi-pick or a text box that shows the step counter
 * ("2/6" beside the title) and, after the first step, a Back button. Each resolves to the answer, to BACK when
 * the user pressed Back, or to undefined when they dismissed it (Escape): the set-up flow steps back on BACK,
 * keeping the earlier answers as the defaults, and abandons on Escape.
 */
import * as vscode from 'vscode';

export const BACK = Symbol('back');
export type Answer<T> = T | typeof BACK | undefined;

export interface StepTitle {
  title: string;
  step: number;
  totalSteps: number;
  /** Show the Back button (every question but the flow's first). */
  back: boolean;
}

/** Wires the common parts of a quick input and resolves once, whatever ends it first. */
function run<Q extends vscode.QuickPick<vscode.QuickPickItem> | vscode.InputBox, R>(q: Q, t: StepTitle, onAccept: (finish: (v: Answer<R>) => void) => void): Promise<Answer<R>> {
  return new Promise((resolve) => {
    q.title = t.title;
    q.step = t.step;
    q.totalSteps = t.totalSteps;
    q.ignoreFocusOut = true;
    q.buttons = t.back ? [vscode.QuickInputButtons.Back] : [];
    let done = false;
    const subs: vscode.Disposable[] = [];
    const finish = (v: Answer<R>) => {
      if (done) return;
      done = true;
      for (const d of subs) d.dispose();
      q.dispose();
      resolve(v);
    };
    subs.push(
      q.onDidTriggerButton((b) => b === vscode.QuickInputButtons.Back && finish(BACK)),
      q.onDidAccept(() => onAccept(finish)),
      q.onDidHide(() => finish(undefined)),
    );
    q.show();
  });
}

/** One item; `active` (the earlier answer) is highlighted so that Enter keeps it. */
export function pickOne<T extends vscode.QuickPickItem>(t: StepTitle, items: T[], o: { placeHolder?: string; matchOnDescription?: boolean; active?: T } = {}): Promise<Answer<T>> {
  const q = vscode.window.createQuickPick<T>();
  q.items = items;
  q.placeholder = o.placeHolder;
  q.matchOnDescription = !!o.matchOnDescription;
  if (o.active) q.activeItems = [o.active];
  return run<typeof q, T>(q, t, (finish) => {
    const chosen = q.selectedItems[0] ?? q.activeItems[0];
    if (chosen) finish(chosen);
  });
}

/** Several items, those for which `selected` holds checked at first; accepting none abandons (as before). */
export function pickMany<T extends vscode.QuickPickItem>(t: StepTitle, items: T[], o: { placeHolder?: string; selected?: (i: T) => boolean } = {}): Promise<Answer<T[]>> {
  const q = vscode.window.createQuickPick<T>();
  q.canSelectMany = true;
  q.items = items;
  q.placeholder = o.placeHolder;
  // Both: `picked` for the item's own record, selectedItems for what the widget shows checked.
  if (o.selected) for (const i of items) i.picked = o.selected(i);
  q.selectedItems = items.filter((i) => i.picked);
  return run<typeof q, T[]>(q, t, (finish) => finish(q.selectedItems.length ? [...q.selectedItems] : undefined));
}

/** A line of text, checked by `validate` (its message shown, Enter refused) before it is accepted. */
export function inputText(t: StepTitle, o: { value?: string; prompt?: string; validate?: (v: string) => string | undefined } = {}): Promise<Answer<string>> {
  const q = vscode.window.createInputBox();
  q.value = o.value ?? '';
  q.prompt = o.prompt;
  const check = (v: string) => (q.validationMessage = o.validate?.(v));
  const sub = q.onDidChangeValue(check);
  check(q.value);
  return run<typeof q, string>(q, t, (finish) => {
    if (o.validate?.(q.value)) return;
    sub.dispose();
    finish(q.value);
  });
}
