/**
 * The ONNX Runtime threads this process's training and gradient sessions may grow to while they run. A lone
 * cell process (cell_pool.ts) starts on the cores the job process leaves it while that evaluates the victim, and
 * is granted the rest once the evaluation ends; in a pool of cell processes, those still running cells are
 * granted the cores of those that have run out of them. Every session a defense or GIC runs on (OrtTrainer,
 * OrtModelGraph, SauAttackGraph) then moves to a session with that many threads, made in the background while
 * runs go on, and the purified model is evaluated on them. Their outputs do not depend on the thread count
 * (see convWeightGradient; test/unit/ort-threads.test.ts), so a run that grows mid-way gives the same row.
 */
import { ortSessionOptions } from '../backend/onnx_runtime';

type OrtSession = import('onnxruntime-node').InferenceSession;
type OrtTensor = import('onnxruntime-node').Tensor;

let grantedThreads = 0;

/** Let this process's sessions grow to `threads` ONNX Runtime threads from their next run on (0: no grant). */
export function grantOrtThreads(threads: number): void {
  grantedThreads = threads;
}

/** The threads granted to this process (0: none). */
export function grantedOrtThreads(): number {
  return grantedThreads;
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
  /** The latest session being made for a grant (or ahead of one), settled or not; at most one at a time. */
  private growing?: Promise<{ session: OrtSession; threads: number } | undefined>;
  private making = false;
  /** Made and not run on yet. */
  private grown?: { session: OrtSession; threads: number };
  /** The threads of the session being made or made and waiting (0: none): a grant above them makes another. */
  private growingThreads = 0;
  private refused = false;
  /** Runs in flight per session: one left behind is released by its last run. */
  private readonly inFlight = new Map<OrtSession, number>();
  private readonly retired = new Set<OrtSession>();
  private released = false;

  private constructor(
    private readonly ort: typeof import('onnxruntime-node'),
    private readonly bytes: Uint8Array,
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
   * Where the session made for a grant is ready and the grant stands, run on it from now on; where more threads
   * are granted than the session has or is being given, make a session with them in the background (one at a
   * time: a grant that rises meanwhile is taken at a run after that one is made).
   */
  private useGrantedThreads(): void {
    if (this.grown && grantedThreads >= this.grown.threads) {
      const old = this.session;
      ({ session: this.session, threads: this.sessionThreads } = this.grown);
      this.grown = undefined;
      if (this.inFlight.has(old)) this.retired.add(old);
      else void releaseQuietly(old);
    }
    if (grantedThreads > Math.max(this.sessionThreads, this.growingThreads) && !this.making && !this.refused) this.grow(grantedThreads);
  }

  /** Make the session for `threads` in the background. */
  private grow(threads: number): void {
    this.making = true;
    this.growingThreads = threads;
    this.growing = this.ort.InferenceSession.create(this.bytes, ortSessionOptions(threads)).then(
      (session) => {
        this.making = false;
        // Released meanwhile: nothing will run on it.
        if (this.released) return void releaseQuietly(session);
        this.grown = { session, threads };
        return this.grown;
      },
      () => {
        // Refused: the graph keeps its session.
        this.making = false;
        this.refused = true;
        return undefined;
      },
    );
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await this.growing;
    if (this.grown) await releaseQuietly(this.grown.session);
    this.grown = undefined;
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
