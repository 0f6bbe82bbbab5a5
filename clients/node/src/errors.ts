// errors.ts - the errors TitanClient rejects with.

/** A worker's error reply (`code` is its stable machine code, PROTOCOL.md §7), or a client-side failure. */
export class TitanError extends Error {
  /** The worker's stable code (`bad_request`, `unknown_op`, `busy`, …), or `"timeout"` / `"protocol"` from the client. */
  readonly code: string;
  /** The worker's whole reply header, when the error came from a reply. */
  readonly reply?: Record<string, unknown>;
  constructor(code: string, message: string, reply?: Record<string, unknown>) {
    super(message);
    this.name = "TitanError";
    this.code = code;
    this.reply = reply;
  }
}

/** The worker answered `busy`: its executors and queue are full. Not retried: send it elsewhere or later. */
export class TitanBusyError extends TitanError {
  constructor(message: string, reply?: Record<string, unknown>) {
    super("busy", message, reply);
    this.name = "TitanBusyError";
  }
}

/**
 * code "timeout": either no reply came within timeoutMs on any of the 1 + retries attempts
 * (`reply` undefined, `attempts` set), or the worker answered `timeout` because the request waited
 * in its queue past its `deadline_ms` (`reply` set).
 */
export class TitanTimeoutError extends TitanError {
  readonly attempts?: number;
  constructor(message: string, reply?: Record<string, unknown>, attempts?: number) {
    super("timeout", message, reply);
    this.name = "TitanTimeoutError";
    this.attempts = attempts;
  }
}

/** Builds the right error class for a worker's error reply. */
export function errorFromReply(reply: Record<string, unknown>): TitanError {
  const code = typeof reply.code === "string" ? reply.code : "error";
  const text = typeof reply.error === "string" ? reply.error : JSON.stringify(reply.error);
  if (code === "busy") return new TitanBusyError(text, reply);
  if (code === "timeout") return new TitanTimeoutError(text, reply);
  return new TitanError(code, text, reply);
}
