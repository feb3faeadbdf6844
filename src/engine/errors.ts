/**
 * Errors the engine raises on purpose. The CLI maps them to exit codes and to the one-line form
 * `error: <what went wrong> (<file or field>)` of SPEC section 9; anything else is a bug (exit 1).
 */

/** Bad usage or bad input: a missing file, an unknown field, a corrupt or malicious file. Exit code 2. */
export class InputError extends Error {
  readonly exitCode = 2;
  /** The file or job field the problem is in, shown in parentheses after the message. */
  readonly where?: string;
  constructor(message: string, where?: string) {
    super(message);
    this.name = 'InputError';
    this.where = where;
  }
}

/** A job step that failed for a reason other than its input (numerical divergence, a defense precondition). */
export class JobError extends Error {
  readonly exitCode = 1;
  readonly where?: string;
  constructor(message: string, where?: string) {
    super(message);
    this.name = 'JobError';
    this.where = where;
  }
}

/** Raised between batches when the job's AbortSignal fires. */
export class CancelledError extends Error {
  constructor() {
    super('cancelled');
    this.name = 'CancelledError';
  }
}

export function throwIfAborted(signal?: AbortSignal): void {
  if (signal?.aborted) throw new CancelledError();
}

/** The one-line form of an error for stderr and for result rows. */
export function oneLine(err: unknown): string {
  if (err instanceof InputError || err instanceof JobError) {
    return err.where ? `${err.message} (${err.where})` : err.message;
  }
  const msg = err instanceof Error ? err.message : String(err);
  return msg.split('\n')[0];
}
