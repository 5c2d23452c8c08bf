/** The pure part of every request: paths, JSON bodies, base64 (no I/O). */
import { TaleError } from "./errors.js";
import type { ExecOptions, StageFile } from "./types.js";

const encoder = new TextEncoder();

export function encode(body: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(body));
}

export function seg(value: string): string {
  return encodeURIComponent(value);
}

export function sessionPath(sessionId: string, ...rest: string[]): string {
  return ["/v1/sessions", seg(sessionId), ...rest.map(seg)].join("/");
}

export function withQuery(path: string, params: Record<string, string | undefined>): string {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) query.set(k, v);
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

export function toBase64(data: string | Uint8Array): string {
  const bytes = typeof data === "string" ? encoder.encode(data) : data;
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function fromBase64(text: string): Uint8Array {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

export function newId(prefix: string): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return `${prefix}-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

export function execBody(execId: string, o: ExecOptions): Record<string, unknown> {
  if ((o.command === undefined) === (o.shell === undefined)) {
    throw new TaleError("exactly one of command or shell is required");
  }
  const body: Record<string, unknown> = { execId };
  if (o.command !== undefined) body.command = o.command;
  if (o.shell !== undefined) body.shell = o.shell;
  if (o.cwd !== undefined) body.cwd = o.cwd;
  if (o.env) body.env = o.env;
  if (o.stdin !== undefined) body.stdinBase64 = toBase64(o.stdin);
  if (o.holdStdin && (o.stdinMode ?? "hold") !== "hold") {
    throw new TaleError(`holdStdin contradicts stdinMode "${o.stdinMode}"`);
  }
  if (o.holdStdin) body.stdinMode = "hold";
  else if (o.stdinMode !== undefined) body.stdinMode = o.stdinMode;
  if (o.pty !== undefined) body.pty = { cols: o.pty.cols, rows: o.pty.rows };
  if (o.timeoutMs !== undefined) body.timeoutMs = o.timeoutMs;
  if (o.collectOutput !== undefined) body.collectOutput = o.collectOutput;
  return body;
}

export function stageItem(file: StageFile): Record<string, unknown> {
  const item: Record<string, unknown> = { path: file.path };
  if (file.url !== undefined) item.url = file.url;
  if (file.content !== undefined) item.contentBase64 = toBase64(file.content);
  return item;
}
