/**
 * Typed client for the tale spawner API. Every request is signed with `SANDBOX_TOKEN` and a fresh
 * nonce; exec and agent-run streams resume transparently after a dropped connection, each event
 * delivered once; journal gaps arrive as `gap` events. No runtime dependencies.
 */
export { TaleClient, ExecStream, DEFAULT_URL } from "./client.js";
export { toBase64, fromBase64 } from "./requests.js";
export type { ClientOptions, RetryPolicy, ReconnectPolicy } from "./client.js";
export {
  TaleError,
  ApiError,
  BadRequest,
  Unauthorized,
  NotFound,
  Conflict,
  PayloadTooLarge,
  TooManyRequests,
  UpstreamError,
  Unavailable,
  StreamInterrupted,
} from "./errors.js";
export { sign, signingString, signedHeaders, SIGNATURE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER } from "./signing.js";
export type * from "./types.js";
