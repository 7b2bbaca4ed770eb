// The CLI's errors and exit codes: each failure class carries the code the process exits with.

export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;
export const EXIT_NO_CLUSTER = 3;
/** GNU timeout's "the command ran out of time": `run` stopped it because its lease ends. */
export const EXIT_LEASE_ENDED = 124;
/**
 * `run`'s codes for "the command did not run", as `docker run` has them: k8s-claimer itself
 * failed (bad options, no cluster, the claimer unreachable or refusing), or the command could
 * not be executed, or was not found. Every other code is the command's own.
 */
export const EXIT_RUN_FAILED = 125;
export const EXIT_CANNOT_EXECUTE = 126;
export const EXIT_COMMAND_NOT_FOUND = 127;

/** Bad flags, a missing server or token: exit 2, with the command's usage on stderr. */
export class UsageError extends Error {
  constructor(
    message: string,
    /** The usage text of the command that was being parsed. */
    readonly usage: string,
  ) {
    super(message);
    this.name = 'UsageError';
  }
}

/** A failure with a message ready for the one stderr line, and the exit code it means. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = EXIT_ERROR,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** Text from a server or the system, squeezed onto one short line (no newlines, no escapes). */
export function oneLine(text: string, maxLength = 300): string {
  const flat = text.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
  return flat.length > maxLength ? `${flat.slice(0, maxLength - 3)}...` : flat;
}
