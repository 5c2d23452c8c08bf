/** The client: every route of the spawner API, signed, with resumable event streams. */
import { download, upload } from "./copy.js";
import { Cursor } from "./cursor.js";
import { apiError, StreamInterrupted, TaleError, ApiError } from "./errors.js";
import { signedHeaders } from "./signing.js";
import { SseParser } from "./sse.js";
import { encode, execBody, newId, sessionPath, stageItem, toBase64, withQuery } from "./requests.js";
import type {
  AgentEventData,
  AgentRunOptions,
  AgentSlug,
  CancelResult,
  CopyResult,
  CreateSessionOptions,
  CredentialResult,
  DeleteResult,
  DestroyResult,
  DirEntry,
  EnvResult,
  ExecEvent,
  ExecOptions,
  ExecOutput,
  ExecResult,
  ExecStatus,
  ExecSummary,
  ExecuteOptions,
  GitCredential,
  PinResult,
  ResizeResult,
  SessionInfo,
  StageFile,
  StageResult,
  StdinResult,
} from "./types.js";

export const DEFAULT_URL = "http://127.0.0.1:8003";

/**
 * Refusals that say when to come back (429 / 503 with `retry-after`) are retried: they were
 * refused before any work was done, so retrying is safe for every method. A wait over `maxWaitMs`,
 * or more than `maxRetries` refusals, throws the `ApiError`.
 */
export interface RetryPolicy {
  maxRetries: number;
  maxWaitMs: number;
}

/**
 * A broken event stream is resumed up to `maxAttempts` times in a row without a new event, waiting
 * `baseDelayMs` doubling to `maxDelayMs` between attempts.
 */
export interface ReconnectPolicy {
  maxAttempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export interface ClientOptions {
  /** Default: `$TALE_SPAWNER_URL`, else `http://127.0.0.1:8003`. */
  baseUrl?: string;
  /** The spawner's HMAC key. Default: `$SANDBOX_TOKEN`. */
  token?: string;
  fetch?: typeof fetch;
  /** Milliseconds since the epoch, for the signature's timestamp. */
  clock?: () => number;
  retry?: Partial<RetryPolicy>;
  reconnect?: Partial<ReconnectPolicy>;
  /** Whole-request limit of non-streaming calls (default 240 s: longer than a session create). */
  requestTimeoutMs?: number;
  /** Silence after which a stream counts as broken (default 65 s: the spawner sends a keepalive every 20 s). */
  streamReadTimeoutMs?: number;
}

interface StreamCall {
  method: string;
  path: string;
  body: Uint8Array | undefined;
}

const NOT_AN_ANSWER = Symbol("not an answer");
type Reader<T> = (status: number, json: any, bytes: Uint8Array) => T | typeof NOT_AN_ANSWER;

function env(name: string): string | undefined {
  const proc = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  return proc?.env?.[name];
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function parseJson(bytes: Uint8Array): unknown {
  if (bytes.length === 0) return undefined;
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return undefined;
  }
}

function retryAfter(response: Response): number | undefined {
  const value = response.headers.get("retry-after");
  if (value === null) return undefined;
  const seconds = Number(value);
  return Number.isFinite(seconds) ? seconds : undefined;
}

/** A transport failure (connection refused or cut, timeout) rather than an answer. */
function isTransportError(err: unknown): boolean {
  return err instanceof TypeError || (err instanceof Error && (err.name === "AbortError" || err.name === "TimeoutError"));
}

/**
 * The events of one exec (or agent run), in order, each exactly once. Iterate it with
 * `for await`, or call `collect()`. A connection that drops mid-stream is resumed transparently
 * by an attach (`Last-Event-ID`); events already delivered are not repeated, and output the
 * session's journal no longer holds arrives as a `gap` event. The stream ends after the `result`
 * (or an `error`) event. Leaving it early (break, `close()`) leaves the exec running.
 */
export class ExecStream implements AsyncIterable<ExecEvent> {
  result: ExecResult | undefined;
  reconnects = 0;
  private controller: AbortController | undefined;
  private closed = false;
  private started = false;

  constructor(
    private readonly client: TaleClient,
    readonly sessionId: string,
    readonly execId: string,
    private readonly first: StreamCall | undefined,
    private readonly resume: (() => StreamCall) | undefined,
    private readonly cursor: Cursor,
  ) {}

  close(): void {
    this.closed = true;
    this.controller?.abort();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ExecEvent> {
    if (this.started) throw new TaleError("an ExecStream can be iterated once");
    this.started = true;
    const policy = this.client.reconnectPolicy;
    let failures = 0;
    let connected = false;
    try {
      while (!this.cursor.finished) {
        let response: Response;
        if (!connected) {
          connected = true;
          const call = this.first ?? this.resume?.();
          if (!call) throw new TaleError("nothing to open");
          this.controller = new AbortController();
          response = await this.client.open(call, this.first ? undefined : this.cursor.resumeId(), this.controller);
        } else {
          if (!this.resume) throw new StreamInterrupted(`the stream of ${this.execId} broke and cannot be resumed`);
          if (failures >= policy.maxAttempts) {
            throw new StreamInterrupted(`the stream of ${this.execId} broke ${failures} times in a row`);
          }
          await sleep(Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** failures));
          failures += 1;
          this.reconnects += 1;
          if (this.closed) return;
          this.controller = new AbortController();
          try {
            response = await this.client.open(this.resume(), this.cursor.resumeId(), this.controller);
          } catch (err) {
            // A transport failure, or the session's runnerd or the spawner struggling: try again later.
            if (isTransportError(err) || (err instanceof ApiError && (err.status === 502 || err.status === 503))) continue;
            throw err;
          }
        }
        const parser = new SseParser();
        const reader = response.body!.getReader();
        try {
          for (;;) {
            const controller = this.controller!;
            const timer = setTimeout(() => controller.abort(), this.client.streamReadTimeoutMs);
            let chunk: ReadableStreamReadResult<Uint8Array>;
            try {
              chunk = await reader.read();
            } finally {
              clearTimeout(timer);
            }
            if (chunk.done) break;
            for (const frame of parser.feed(chunk.value)) {
              const event = this.cursor.accept(frame);
              if (event === undefined) continue;
              failures = 0;
              if (event.type === "result") this.result = event.result;
              yield event;
              if (this.cursor.finished) return;
            }
          }
        } catch (err) {
          if (this.closed) return;
          if (!isTransportError(err)) throw err;
        } finally {
          this.controller?.abort();
        }
      }
    } finally {
      this.controller?.abort();
    }
  }

  /** Reads the stream to its end: output text, gaps, agent events, result. */
  async collect(): Promise<ExecOutput> {
    const stdout: string[] = [];
    const stderr: string[] = [];
    const out: ExecOutput = {
      stdout: "",
      stderr: "",
      result: undefined,
      exitCode: undefined,
      gaps: [],
      agentEvents: [],
      error: undefined,
    };
    for await (const event of this) {
      if (event.type === "stdout") stdout.push(event.text);
      else if (event.type === "stderr") stderr.push(event.text);
      else if (event.type === "gap") out.gaps.push({ fromSeq: event.fromSeq, toSeq: event.toSeq });
      else if (event.type === "agent") out.agentEvents.push({ id: event.id, event: event.event });
      else if (event.type === "error") out.error = event.message;
    }
    out.stdout = stdout.join("");
    out.stderr = stderr.join("");
    out.result = this.result;
    out.exitCode = this.result?.exitCode;
    return out;
  }
}

/** Client of the tale spawner API. Every request is signed with the token and a fresh nonce. */
export class TaleClient {
  readonly baseUrl: string;
  readonly reconnectPolicy: ReconnectPolicy;
  readonly retryPolicy: RetryPolicy;
  readonly streamReadTimeoutMs: number;
  private readonly token: string;
  private readonly fetchImpl: typeof fetch;
  private readonly clock: () => number;
  private readonly requestTimeoutMs: number;

  constructor(options: ClientOptions = {}) {
    const token = options.token ?? env("SANDBOX_TOKEN");
    if (!token) throw new TaleError("no token: pass { token } or set SANDBOX_TOKEN (the spawner's HMAC key)");
    this.token = token;
    this.baseUrl = (options.baseUrl ?? env("TALE_SPAWNER_URL") ?? DEFAULT_URL).replace(/\/+$/, "");
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.clock = options.clock ?? Date.now;
    this.retryPolicy = { maxRetries: 3, maxWaitMs: 30_000, ...options.retry };
    this.reconnectPolicy = { maxAttempts: 10, baseDelayMs: 50, maxDelayMs: 2000, ...options.reconnect };
    this.requestTimeoutMs = options.requestTimeoutMs ?? 240_000;
    this.streamReadTimeoutMs = options.streamReadTimeoutMs ?? 65_000;
  }

  // ---- plumbing ----

  private async request(
    method: string,
    path: string,
    body: Uint8Array | undefined,
    lastEventId: string | undefined,
    signal: AbortSignal,
  ): Promise<Response> {
    const url = new URL(this.baseUrl + path);
    const headers = await signedHeaders(
      this.token,
      method,
      url.pathname + url.search,
      body ?? new Uint8Array(0),
      this.clock(),
    );
    if (body !== undefined) headers["content-type"] = "application/json";
    if (lastEventId !== undefined) headers["last-event-id"] = lastEventId;
    return this.fetchImpl(url, { method, headers, body: body as BodyInit | undefined, signal });
  }

  private retryWait(response: Response, attempt: number): number | undefined {
    const after = retryAfter(response);
    if ((response.status !== 429 && response.status !== 503) || after === undefined) return undefined;
    if (attempt >= this.retryPolicy.maxRetries || after * 1000 > this.retryPolicy.maxWaitMs) return undefined;
    return Math.max(after * 1000, 0);
  }

  private async call<T>(
    method: string,
    path: string,
    body: unknown,
    read: Reader<T>,
    answers: number[] = [],
  ): Promise<T> {
    const bytes = body === undefined ? undefined : body instanceof Uint8Array ? body : encode(body);
    for (let attempt = 0; ; attempt++) {
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), this.requestTimeoutMs);
      let response: Response;
      let content: Uint8Array;
      try {
        response = await this.request(method, path, bytes, undefined, controller.signal);
        content = new Uint8Array(await response.arrayBuffer());
      } finally {
        clearTimeout(timer);
      }
      const json = parseJson(content);
      if (response.ok || answers.includes(response.status)) {
        const answer = read(response.status, json, content);
        if (answer !== NOT_AN_ANSWER) return answer;
      }
      const wait = this.retryWait(response, attempt);
      if (wait === undefined) throw apiError(response.status, json, retryAfter(response));
      await sleep(wait);
    }
  }

  /** Opens an event stream (internal: used by `ExecStream`). */
  async open(call: StreamCall, lastEventId: string | undefined, controller: AbortController): Promise<Response> {
    for (let attempt = 0; ; attempt++) {
      const timer = setTimeout(() => controller.abort(), this.requestTimeoutMs);
      let response: Response;
      try {
        response = await this.request(call.method, call.path, call.body, lastEventId, controller.signal);
      } finally {
        clearTimeout(timer);
      }
      if (response.status === 200 && response.body) return response;
      const content = new Uint8Array(await response.arrayBuffer());
      const wait = this.retryWait(response, attempt);
      if (wait === undefined) throw apiError(response.status, parseJson(content), retryAfter(response));
      await sleep(wait);
    }
  }

  // ---- sessions ----

  /** `GET /health`: `{status, …}`, also when unhealthy (503). */
  health(): Promise<Record<string, unknown>> {
    return this.call("GET", "/health", undefined, (_s, j) => j, [503]);
  }

  /** Creates the session, or resumes it on its kept workspace (409 `Conflict` while it lives). */
  createSession(options: CreateSessionOptions): Promise<SessionInfo> {
    return this.call("POST", "/v1/sessions", options, (_s, j) => j.session as SessionInfo);
  }

  listSessions(organizationId?: string): Promise<SessionInfo[]> {
    return this.call("GET", withQuery("/v1/sessions", { organizationId }), undefined, (_s, j) => j.sessions);
  }

  getSession(sessionId: string): Promise<SessionInfo> {
    return this.call("GET", sessionPath(sessionId), undefined, (_s, j) => j.session);
  }

  /** Destroys the session and its workspace; `ifIdle` refuses (`busy: true`) while execs run. */
  deleteSession(sessionId: string, options: { ifIdle?: boolean } = {}): Promise<DestroyResult> {
    const path = withQuery(sessionPath(sessionId), { if_idle: options.ifIdle ? "1" : undefined });
    return this.call("DELETE", path, undefined, (_s, j) => j);
  }

  pinSession(sessionId: string, pinned = true): Promise<PinResult> {
    return this.call("PATCH", sessionPath(sessionId, "pin"), { pinned }, (_s, j) => j);
  }

  patchEnv(sessionId: string, patch: { set?: Record<string, string>; unset?: string[] }): Promise<EnvResult> {
    return this.call("PATCH", sessionPath(sessionId, "env"), patch, (_s, j) => j);
  }

  // ---- execs ----

  /** Starts `command` (argv) or `shell` in the session; returns its resumable stream. */
  exec(sessionId: string, options: ExecOptions): ExecStream {
    const execId = options.execId ?? newId("exec");
    const call = { method: "POST", path: sessionPath(sessionId, "exec"), body: encode(execBody(execId, options)) };
    const attach = () => ({ method: "GET", path: sessionPath(sessionId, "exec", execId, "attach"), body: undefined });
    return new ExecStream(this, sessionId, execId, call, attach, new Cursor());
  }

  /** `exec` read to its end. */
  run(sessionId: string, options: ExecOptions): Promise<ExecOutput> {
    return this.exec(sessionId, options).collect();
  }

  /** Reattaches to an exec, replaying what follows `sinceSeq`. */
  attach(sessionId: string, execId: string, options: { sinceSeq?: number } = {}): ExecStream {
    const attach = () => ({ method: "GET", path: sessionPath(sessionId, "exec", execId, "attach"), body: undefined });
    return new ExecStream(this, sessionId, execId, undefined, attach, new Cursor(false, options.sinceSeq ?? 0));
  }

  /**
   * Writes to an exec whose stdin is held (one JSON line per write) or raw (any bytes, at most
   * 1 MiB per write; keys for a pty exec); `eof` closes its stdin.
   */
  writeStdin(
    sessionId: string,
    execId: string,
    data?: string | Uint8Array,
    options: { eof?: boolean } = {},
  ): Promise<StdinResult> {
    const body: Record<string, unknown> = {};
    if (data !== undefined) body.b64 = toBase64(data);
    if (options.eof) body.eof = true;
    return this.call("POST", sessionPath(sessionId, "exec", execId, "stdin"), body, (_s, j) => j);
  }

  /**
   * Sets a pty exec's terminal size (its foreground programs get SIGWINCH); `ok: false` with
   * `NOT_FOUND` / `NOT_A_TERMINAL`; `BadRequest` for a size outside 1–1000.
   */
  resize(sessionId: string, execId: string, cols: number, rows: number): Promise<ResizeResult> {
    return this.call("POST", sessionPath(sessionId, "exec", execId, "resize"), { cols, rows }, (_s, j) => j);
  }

  /** The session's live and retained execs, oldest start first. */
  listExecs(sessionId: string): Promise<ExecSummary[]> {
    return this.call("GET", sessionPath(sessionId, "exec"), undefined, (_s, j) => j.execs);
  }

  cancel(sessionId: string, execId: string): Promise<CancelResult> {
    return this.call("POST", sessionPath(sessionId, "exec", execId, "cancel"), new Uint8Array(0), (_s, j) => j);
  }

  /** `running`, `exited` or `gone` (an unknown exec is `gone`, not an error). */
  execStatus(sessionId: string, execId: string): Promise<ExecStatus> {
    return this.call(
      "GET",
      sessionPath(sessionId, "exec", execId),
      undefined,
      (status, j) => (status === 404 && !(j && typeof j === "object" && "state" in j) ? NOT_AN_ANSWER : j),
      [404],
    );
  }

  /**
   * The one-shot run: a fresh session, optional files, one command, then the session is destroyed.
   * Its session goes when the connection does, so this stream cannot be resumed.
   */
  execute(options: ExecuteOptions): ExecStream {
    const body = execBody("run", options);
    if (options.organizationId !== undefined) body.organizationId = options.organizationId;
    if (options.files) body.files = options.files.map(stageItem);
    const call = { method: "POST", path: "/v1/execute", body: encode(body) };
    return new ExecStream(this, "", "run", call, undefined, new Cursor());
  }

  // ---- files ----

  stageFiles(sessionId: string, files: StageFile[]): Promise<StageResult> {
    return this.call("POST", sessionPath(sessionId, "files", "stage"), { files: files.map(stageItem) }, (_s, j) => j);
  }

  writeFile(sessionId: string, path: string, content: string | Uint8Array): Promise<StageResult> {
    return this.stageFiles(sessionId, [{ path, content }]);
  }

  deleteFiles(sessionId: string, paths: string[]): Promise<DeleteResult> {
    return this.call("POST", sessionPath(sessionId, "files", "delete"), { paths }, (_s, j) => j);
  }

  listFiles(sessionId: string, path = "."): Promise<DirEntry[]> {
    return this.call("GET", withQuery(sessionPath(sessionId, "files"), { path }), undefined, (_s, j) => j.entries);
  }

  readFile(sessionId: string, path: string): Promise<Uint8Array> {
    const route = withQuery(sessionPath(sessionId, "files", "content"), { path });
    return this.call("GET", route, undefined, (_s, _j, bytes) => bytes);
  }

  /** One chunk of a file written in pieces (`commit` on the last); the file's size so far. */
  writeChunk(sessionId: string, path: string, offset: number, data: Uint8Array, commit: boolean): Promise<number> {
    const route = withQuery(sessionPath(sessionId, "files", "write"), {
      path,
      offset: String(offset),
      commit: String(commit),
    });
    return this.call("POST", route, data, (_s, j) => Number(j.size));
  }

  /** At most `length` bytes of a file from `offset` (fewer only at its end). */
  readRange(sessionId: string, path: string, offset: number, length: number): Promise<Uint8Array> {
    const route = withQuery(sessionPath(sessionId, "files", "content"), {
      path,
      offset: String(offset),
      length: String(length),
    });
    return this.call("GET", route, undefined, (_s, _j, bytes) => bytes);
  }

  /**
   * Copies a local file, or every file of a local directory tree, to `remotePath` in the session
   * (Node only) — any size, in chunks; symlinks, special files and empty directories are left out.
   * A file appears at its path only once whole.
   */
  upload(sessionId: string, localPath: string, remotePath: string): Promise<CopyResult> {
    return upload(this, sessionId, localPath, remotePath);
  }

  /**
   * Copies a session's file (to `localPath`, or into it when it is a directory) or directory tree
   * (as `localPath`) to this machine (Node only) — any size, in ranged reads.
   */
  download(sessionId: string, remotePath: string, localPath: string): Promise<CopyResult> {
    return download(this, sessionId, remotePath, localPath);
  }

  // ---- git credentials ----

  grantGitCredential(sessionId: string, credential: GitCredential): Promise<CredentialResult> {
    return this.call("PUT", sessionPath(sessionId, "credentials", "git"), credential, (_s, j) => j);
  }

  revokeGitCredential(sessionId: string, host: string): Promise<CredentialResult> {
    return this.call("DELETE", sessionPath(sessionId, "credentials", "git", host), undefined, (_s, j) => j);
  }

  // ---- agent runs ----

  /**
   * Runs an agent CLI (`claude-code` | `opencode`); the stream carries `agent` events besides the
   * exec's own, and resumes like any exec stream.
   */
  startAgentRun(sessionId: string, options: AgentRunOptions): ExecStream {
    const execId = options.execId ?? newId("run");
    const run: Record<string, unknown> = { prompt: options.prompt };
    const optional = {
      model: options.model,
      agentSessionId: options.agentSessionId,
      maxTurns: options.maxTurns,
      systemPromptAppend: options.systemPromptAppend,
      workdir: options.workdir,
      browserMcp: options.browserMcp,
      permissionMode: options.permissionMode,
    };
    for (const [k, v] of Object.entries(optional)) if (v !== undefined) run[k] = v;
    const gateway: Record<string, unknown> = { token: options.gatewayToken };
    if (options.gatewayBaseUrl !== undefined) gateway.baseUrl = options.gatewayBaseUrl;
    const body: Record<string, unknown> = { agent: options.agent, execId, run, gateway };
    if (options.timeoutMs !== undefined) body.timeoutMs = options.timeoutMs;
    const call = { method: "POST", path: sessionPath(sessionId, "agent-runs"), body: encode(body) };
    return new ExecStream(this, sessionId, execId, call, this.agentAttach(sessionId, execId, options.agent), new Cursor(true));
  }

  /** Reattaches to an agent run after event id `after` (`N` or `N.k`; default: from the start). */
  attachAgentRun(sessionId: string, execId: string, options: { agent: AgentSlug; after?: string }): ExecStream {
    const cursor = new Cursor(true);
    if (options.after !== undefined) {
      const [seq, sub] = options.after.split(".");
      cursor.position = [Number(seq), sub === undefined ? 0 : Number(sub)];
    }
    return new ExecStream(this, sessionId, execId, undefined, this.agentAttach(sessionId, execId, options.agent), cursor);
  }

  private agentAttach(sessionId: string, execId: string, agent: AgentSlug): () => StreamCall {
    return () => ({
      method: "GET",
      path: withQuery(sessionPath(sessionId, "agent-runs", execId, "attach"), { agent }),
      body: undefined,
    });
  }

  /** Sends one more user message to the agent (and/or closes its stdin with `eof`). */
  steerAgentRun(
    sessionId: string,
    execId: string,
    options: { agent: AgentSlug; text?: string; eof?: boolean },
  ): Promise<StdinResult> {
    const body: Record<string, unknown> = { agent: options.agent };
    if (options.text !== undefined) body.text = options.text;
    if (options.eof) body.eof = true;
    return this.call("POST", sessionPath(sessionId, "agent-runs", execId, "steer"), body, (_s, j) => j);
  }
}

export type { AgentEventData };
