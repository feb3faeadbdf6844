/**
 * The only module that imports @vscode/webview-ui-toolkit. The toolkit is deprecated upstream; everything
 * else in the panel creates its controls through these helpers, so moving to @vscode-elements (or plain
 * elements) is a change to this file alone.
 */
import { provideVSCodeDesignSystem, vsCodeBadge, vsCodeButton, vsCodeDivider, vsCodeLink, vsCodeProgressRing } from '@vscode/webview-ui-toolkit';

let registered = false;

/** Registers the custom elements once; safe to call from both views. */
export function registerToolkit(): void {
  if (registered) return;
  registered = true;
  provideVSCodeDesignSystem().register(vsCodeButton(), vsCodeBadge(), vsCodeDivider(), vsCodeLink(), vsCodeProgressRing());
}

export function button(label: string, onClick: () => void, appearance: 'primary' | 'secondary' | 'icon' = 'secondary', title?: string): HTMLElement {
  const b = document.createElement('vscode-button');
  b.setAttribute('appearance', appearance);
  b.textContent = label;
  if (title) b.title = title;
  b.addEventListener('click', onClick);
  return b;
}

/** A text link that runs `onClick` (links to purified models: the host opens them, the page never navigates). */
export function link(label: string, onClick: () => void, title?: string): HTMLElement {
  const a = document.createElement('vscode-link');
  a.textContent = label;
  a.setAttribute('href', '#');
  if (title) a.title = title;
  a.addEventListener('click', (ev) => {
    ev.preventDefault();
    onClick();
  });
  return a;
}

export function badge(text: string): HTMLElement {
  const b = document.createElement('vscode-badge');
  b.textContent = text;
  return b;
}

export function divider(): HTMLElement {
  return document.createElement('vscode-divider');
}

export function progressRing(): HTMLElement {
  return document.createElement('vscode-progress-ring');
}
