/**
 * The spawner's request signature: HMAC-SHA256 keyed with `SANDBOX_TOKEN` over
 * `METHOD\npath?query\ntimestamp\nnonce\nsha256hex(body)`. A fresh random nonce is always sent:
 * without it two identical requests in one millisecond (two equal keystrokes to stdin) would carry
 * the same signature and the second would be refused as a replay. WebCrypto only (no `node:` import).
 */
export const SIGNATURE_HEADER = "x-tale-sandbox-signature";
export const TIMESTAMP_HEADER = "x-tale-sandbox-timestamp";
export const NONCE_HEADER = "x-tale-sandbox-nonce";

const encoder = new TextEncoder();

function hex(bytes: ArrayBuffer | Uint8Array): string {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let out = "";
  for (const b of view) out += b.toString(16).padStart(2, "0");
  return out;
}

export async function sha256Hex(body: Uint8Array): Promise<string> {
  return hex(await crypto.subtle.digest("SHA-256", body as BufferSource));
}

export async function signingString(
  method: string,
  pathAndQuery: string,
  timestampMs: string,
  nonce: string | undefined,
  body: Uint8Array,
): Promise<string> {
  const parts = [method.toUpperCase(), pathAndQuery, timestampMs];
  if (nonce) parts.push(nonce);
  parts.push(await sha256Hex(body));
  return parts.join("\n");
}

const keys = new Map<string, Promise<CryptoKey>>();

function hmacKey(token: string): Promise<CryptoKey> {
  let key = keys.get(token);
  if (!key) {
    key = crypto.subtle.importKey("raw", encoder.encode(token), { name: "HMAC", hash: "SHA-256" }, false, [
      "sign",
    ]);
    keys.set(token, key);
  }
  return key;
}

/** Lowercase hex HMAC-SHA256 of the signing string. */
export async function sign(
  token: string,
  method: string,
  pathAndQuery: string,
  timestampMs: string,
  nonce: string | undefined,
  body: Uint8Array,
): Promise<string> {
  const message = await signingString(method, pathAndQuery, timestampMs, nonce, body);
  return hex(await crypto.subtle.sign("HMAC", await hmacKey(token), encoder.encode(message)));
}

export function newNonce(): string {
  return hex(crypto.getRandomValues(new Uint8Array(16)));
}

/** The three headers of a signed request, with a fresh nonce. */
export async function signedHeaders(
  token: string,
  method: string,
  pathAndQuery: string,
  body: Uint8Array,
  nowMs: number,
): Promise<Record<string, string>> {
  const timestamp = String(nowMs);
  const nonce = newNonce();
  return {
    [SIGNATURE_HEADER]: await sign(token, method, pathAndQuery, timestamp, nonce, body),
    [TIMESTAMP_HEADER]: timestamp,
    [NONCE_HEADER]: nonce,
  };
}
