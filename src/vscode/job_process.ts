/**
 * The host side of a job process: forks dist/job-process.js (one per job), sends it typed requests, parses
 * what it answers (src/shared/job_process.ts), keeps the last lines it wrote on stderr so that a crash
 * or an out-of-memory abort can be shown with its cause, and stops it in two steps (SIGTERM, which the job
 * process takes as a cancel, then SIGKILL after a grace period). No `vscode` import: plain mocha drives it with
 * a real child process, the way the extension does.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { parseJobToHost, type HostToJob, type JobToHost } from '../shared/job_process';
import { heapEnv } from '../engine/util/heap_env';

/** What the JobRunner needs of a running job: the job process here, a fake in unit tests. */
export interface JobHandle {
  postMessage(m: HostToJob): void;
  /** Only messages that parse as JobToHost are delivered. */
  on(event: 'message', cb: (m: JobToHost) => void): unknown;
  on(event: 'error', cb: (e: Error) => void): unknown;
  /** `describe` says how it ended, with its last stderr lines when it did not end normally. */
  on(event: 'exit', cb: (code: number | null, signal: NodeJS.Signals | null, describe: string) => void): unknown;
  /** Stop it: resolves once it has exited (a no-op for one that has). */
  terminate(): Promise<void>;
  /** The job process's pid: names its staging folders. */
  readonly pid?: number;
}

export interface JobProcessOptions {
  /** dist/job-process.js of the extension. */
  script: string;
  /** Heap limit of the job process in MB (V8's --max-old-space-size); 0 or absent: Node's default. */
  maxMemoryMB?: number;
  /** How long SIGTERM gets before SIGKILL. */
  killGraceMs?: number;
  cwd?: string;
  /** Each line the process writes on stdout or stderr (for the Output channel). */
  onOutput?: (line: string, stream: 'stdout' | 'stderr') => void;
  /** Extra environment variables (tests). */
  env?: Record<string, string>;
}

export const KILL_GRACE_MS = 5_000;
/** stderr lines kept for the failure message. */
export const STDERR_TAIL = 12;

export class JobProcess implements JobHandle {
  readonly child: ChildProcess;
  private readonly tail: string[] = [];
  /** The first out-of-memory line on stderr, kept even when more output pushes it out of the tail. */
  private oomLine?: string;
  private exited = false;
  private readonly exitedPromise: Promise<void>;
  private readonly listeners = { message: [] as Array<(m: JobToHost) => void>, error: [] as Array<(e: Error) => void>, exit: [] as Array<(c: number | null, s: NodeJS.Signals | null, d: string) => void> };

  constructor(private readonly o: JobProcessOptions) {
    const execArgv = o.maxMemoryMB && o.maxMemoryMB > 0 ? [`--max-old-space-size=${Math.round(o.maxMemoryMB)}`] : [];
    this.child = fork(o.script, [], {
      cwd: o.cwd,
      // Under VS Code, process.execPath is the editor's Electron binary: this makes it run as plain Node.
      // heapEnv: the job process evaluates through ONNX Runtime, whose outputs reach JavaScript as new buffers.
      env: { ...heapEnv(process.env), ELECTRON_RUN_AS_NODE: '1', ...o.env },
      // Not the host's own flags (inspector ports, its heap size): only ours.
      execArgv,
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      serialization: 'json',
    });
    this.lines(this.child.stdout, 'stdout');
    this.lines(this.child.stderr, 'stderr');
    this.child.on('message', (raw) => {
      const m = parseJobToHost(raw);
      if (m) for (const l of [...this.listeners.message]) l(m);
      else o.onOutput?.(`ignored a message that is not a job event: ${JSON.stringify(raw).slice(0, 200)}`, 'stderr');
    });
    this.child.on('error', (e) => {
      for (const l of [...this.listeners.error]) l(e);
    });
    this.exitedPromise = new Promise((resolve) => {
      // 'close': the process has exited and its stdio is drained, so the stderr tail is complete.
      this.child.once('close', (code, signal) => {
        this.exited = true;
        // V8's out-of-memory line is followed by its native stack, which can be longer than the tail kept.
        const d = describeExit(code, signal, this.oomLine && !this.tail.includes(this.oomLine) ? [this.oomLine, ...this.tail] : this.tail, o.maxMemoryMB);
        for (const l of [...this.listeners.exit]) l(code, signal, d);
        resolve();
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** The last lines the process wrote on stderr. */
  stderrTail(): string[] {
    return [...this.tail];
  }

  postMessage(m: HostToJob): void {
    if (this.exited || !this.child.connected) return;
    this.child.send(m, (e) => {
      // The process ended between the check and the write: its exit reports it.
      void e;
    });
  }

  on(event: 'message', cb: (m: JobToHost) => void): this;
  on(event: 'error', cb: (e: Error) => void): this;
  on(event: 'exit', cb: (code: number | null, signal: NodeJS.Signals | null, describe: string) => void): this;
  on(event: 'message' | 'error' | 'exit', cb: (...a: never[]) => void): this {
    (this.listeners[event] as unknown[]).push(cb);
    return this;
  }

  terminate(): Promise<void> {
    if (this.exited) return this.exitedPromise;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => {
      if (!this.exited) this.child.kill('SIGKILL');
    }, this.o.killGraceMs ?? KILL_GRACE_MS);
    return this.exitedPromise.finally(() => clearTimeout(timer));
  }

  private lines(stream: NodeJS.ReadableStream | null, name: 'stdout' | 'stderr'): void {
    if (!stream) return;
    let buf = '';
    stream.setEncoding('utf8');
    const take = (line: string) => {
      if (!line.trim()) return;
      if (name === 'stderr') {
        if (this.oomLine === undefined && OOM_LINE.test(line)) this.oomLine = line;
        this.tail.push(line);
        if (this.tail.length > STDERR_TAIL) this.tail.shift();
      }
      this.o.onOutput?.(line, name);
    };
    stream.on('data', (chunk: string) => {
      buf += chunk;
      const parts = buf.split(/\r?\n/);
      buf = parts.pop() ?? '';
      parts.forEach(take);
    });
    stream.on('end', () => {
      if (buf) take(buf);
      buf = '';
    });
  }
}

export function forkJobProcess(o: JobProcessOptions): JobProcess {
  return new JobProcess(o);
}

/** A line by which Node or V8 says the process ran out of memory. */
const OOM_LINE = /heap out of memory|Reached heap limit|std::bad_alloc|Out of memory/i;

/** One line for a job process that ended without a last event: how it ended and what it said last. */
export function describeExit(code: number | null, signal: string | null, stderrTail: string[], maxMemoryMB?: number): string {
  const oomLine = stderrTail.find((l) => OOM_LINE.test(l));
  const oom = oomLine !== undefined;
  const how = oom
    ? `ran out of memory${maxMemoryMB ? ` (limit ${maxMemoryMB} MB: setting backdoorAudit.jobProcess.maxMemoryMB)` : ''}`
    : signal
      ? `was killed by ${signal}`
      : `exited with code ${code}`;
  // V8's out-of-memory report ends with a native stack: its first line says what happened.
  const last = (oomLine !== undefined ? [oomLine] : stderrTail.slice(-3)).map((l) => l.trim()).join(' | ');
  return `the job process ${how} before the job ended${last ? `; last output: ${last}` : ''}`;
}
