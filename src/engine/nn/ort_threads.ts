/**
 * The ONNX Runtime threads this process's training and gradient sessions may grow to while they run. A lone
 * cell process (cell_pool.ts) starts on the cores the job process leaves it while that evaluates the victim, and
 * is granted the rest once the evaluation ends: every session a defense or GIC runs on (OrtTrainer, OrtModelGraph,
 * SauAttackGraph) then moves to a session with that many threads, made in the background while runs go on.
 * Their outputs do not depend on the thread count (see convWeightGradient; test/unit/ort-threads.test.ts), so a
 * run that grows mid-way gives the same row.
 */
import { ortSessionOptions } from '../backend/onnx_runtime';

type OrtSession = import('onnxruntime-node').InferenceSession;
type OrtTensor = import('onnxruntime-node').Tensor;

let grantedThreads = 0;

/** Let this process's sessions grow to `threads` ONNX Runtime threads from their next run on (0: no grant). */
export function grantOrtThreads(threads: number): void {
  grantedThreads = threads;
}

/**
 * The grant this process expects (a lone cell's: its evaluation threads). A trainer made before the grant makes
 * its session for that many threads beside its first steps, so that the step after the grant runs on them: made
 * at the grant instead, the session took one more step on the old thread count (a step of the zoo's width-16
 * PreAct-ResNet18 is about 365 ms on one thread, 210 on two; making the session, 80 ms, slowed it further).
 */
let expectedThreads = 0;

export function expectOrtThreads(threads: number): void {
  expectedThreads = threads;
}

/**
 * One graph's session that moves to the granted threads: `run` takes the session made for them from the first
 * run after it is ready, and a session left behind is released once no run is using it.
 */
export class GrowingSession {
  private growing?: Promise<{ session: OrtSession; threads: number } | undefined>;
  private grown?: { session: OrtSession; threads: number };
  /** Runs in flight per session: one left behind is released by its last run. */
  private readonly inFlight = new Map<OrtSession, number>();
  private readonly retired = new Set<OrtSession>();
  private released = false;

  private constructor(
    private readonly ort: typeof import('onnxruntime-node'),
    /** The graph, kept until a session with more threads is being made from it. */
    private bytes: Uint8Array | undefined,
    private session: OrtSession,
    private sessionThreads: number,
  ) {}

  /**
   * A session of the graph `bytes` on `threads` threads, or on the grant's where that is more; with `ahead`, one
   * for the expected grant is made beside it (see expectOrtThreads). Rejects where ONNX Runtime refuses the graph.
   */
  static async create(ort: typeof import('onnxruntime-node'), bytes: Uint8Array, threads: number, o: { ahead?: boolean } = {}): Promise<GrowingSession> {
    const start = Math.max(1, threads, grantedThreads);
    const s = new GrowingSession(ort, bytes, await ort.InferenceSession.create(bytes, ortSessionOptions(start)), start);
    if (o.ahead && expectedThreads > start) s.grow(expectedThreads);
    return s;
  }

  /** The ONNX Runtime threads of the session that runs next. */
  get threads(): number {
    return this.sessionThreads;
  }

  /** The threads of the session being made ahead or for a grant, once it is made; 0: none. */
  async aheadThreads(): Promise<number> {
    return (await this.growing)?.threads ?? 0;
  }

  get inputNames(): readonly string[] {
    return this.session.inputNames;
  }

  /** Run on the session of the most threads granted and ready. */
  async run(feeds: Record<string, OrtTensor>): Promise<Record<string, OrtTensor>> {
    if (this.released) throw new Error('ONNX Runtime session is released');
    this.useGrantedThreads();
    const session = this.session;
    this.inFlight.set(session, (this.inFlight.get(session) ?? 0) + 1);
    try {
      return await session.run(feeds);
    } finally {
      const left = this.inFlight.get(session)! - 1;
      if (left) this.inFlight.set(session, left);
      else {
        this.inFlight.delete(session);
        if (this.retired.delete(session)) await releaseQuietly(session);
      }
    }
  }

  /**
   * Where more threads were granted than the session has, make a session with them in the background unless one
   * is being made already; where the one made is ready and granted, run on it from now on.
   */
  private useGrantedThreads(): void {
    if (this.grown && grantedThreads >= this.grown.threads) {
      const old = this.session;
      ({ session: this.session, threads: this.sessionThreads } = this.grown);
      this.grown = undefined;
      if (this.inFlight.has(old)) this.retired.add(old);
      else void releaseQuietly(old);
    }
    if (grantedThreads > this.sessionThreads && !this.growing) this.grow(grantedThreads);
  }

  /** Make the session for `threads` in the background (once: a process is granted its threads once). */
  private grow(threads: number): void {
    const bytes = this.bytes!;
    this.bytes = undefined;
    this.growing = this.ort.InferenceSession.create(bytes, ortSessionOptions(threads)).then(
      (session) => {
        // Released meanwhile: nothing will run on it.
        if (this.released) return void releaseQuietly(session);
        this.grown = { session, threads };
        return this.grown;
      },
      () => undefined, // refused: the graph keeps its session
    );
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    const grown = await this.growing;
    if (grown && grown.session !== this.session) await grown.session.release();
    await this.session.release();
  }
}

/** Release a session no run uses any more; a failure to release it must not fail a run. */
async function releaseQuietly(session: OrtSession): Promise<void> {
  try {
    await session.release();
  } catch {
    // Already gone with its process's ONNX Runtime: nothing to free.
  }
}
