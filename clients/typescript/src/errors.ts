/** Errors thrown by the client. Decisions rest on the HTTP status and the envelope's `error` code, never on message text. */
export class TaleError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/**
 * The spawner answered with a non-success status. `code` is the envelope's stable `error` code
 * (`not_found`, `bad_request`, `unauthorized`, `duplicate`, `session_quota`, `payload_too_large`,
 * `upstream_error`, `create_failed`, …); `retryAfter` the `retry-after` header in seconds, when sent.
 */
export class ApiError extends TaleError {
  constructor(
    readonly status: number,
    readonly code: string | undefined,
    readonly detail: string | undefined,
    readonly retryAfter: number | undefined,
    readonly body: unknown,
  ) {
    super(`HTTP ${status}${code ? ` ${code}` : ""}${detail ? `: ${detail}` : ""}`);
  }
}

/** 400: the request was refused as invalid. */
export class BadRequest extends ApiError {}
/** 401: wrong token, clock skew over 30 s, or a replayed signature. */
export class Unauthorized extends ApiError {}
/** 404: no such session (or path, for the file routes). */
export class NotFound extends ApiError {}
/** 409: the session exists or is being created (`duplicate`). */
export class Conflict extends ApiError {}
/** 413: the body is over the spawner's request cap. */
export class PayloadTooLarge extends ApiError {}
/** 429: a cap was reached (`session_quota`, `busy`); see `retryAfter`. */
export class TooManyRequests extends ApiError {}
/** 502: the session's runnerd or the backend failed. */
export class UpstreamError extends ApiError {}
/** 503: the spawner is over a budget or unhealthy; see `retryAfter`. */
export class Unavailable extends ApiError {}

const byStatus: Record<number, typeof ApiError> = {
  400: BadRequest,
  401: Unauthorized,
  404: NotFound,
  409: Conflict,
  413: PayloadTooLarge,
  429: TooManyRequests,
  502: UpstreamError,
  503: Unavailable,
};

export function apiError(status: number, body: unknown, retryAfter: number | undefined): ApiError {
  const envelope = typeof body === "object" && body !== null ? (body as Record<string, unknown>) : {};
  const code = typeof envelope.error === "string" ? envelope.error : undefined;
  const message = typeof envelope.message === "string" ? envelope.message : undefined;
  const Kind = byStatus[status] ?? ApiError;
  return new Kind(status, code, message, retryAfter, body);
}

/**
 * An event stream broke and could not be resumed (reconnect attempts exhausted, or a stream that
 * cannot be resumed, such as the one-shot `execute`).
 */
export class StreamInterrupted extends TaleError {
  constructor(
    message: string,
    readonly cause?: unknown,
  ) {
    super(message);
  }
}
