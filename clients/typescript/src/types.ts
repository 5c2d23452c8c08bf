/** Wire shapes of the spawner API (camelCase JSON, exactly as sent) and the typed stream events. */

export type Profile = "default" | "agent";
export type SessionState = "creating" | "ready" | "degraded" | "terminating" | "terminated" | "expired";

export interface SessionInfo {
  sessionId: string;
  organizationId: string;
  profile: Profile;
  state: SessionState;
  backend: string;
  createdAtMs: number;
  lastActivityAtMs: number;
  expiresAtMs: number;
  idleTimeoutMs: number;
  pinned: boolean;
  /** Absent: reachable; `false`: its compute cannot be reached (kubernetes: its Pod's node stopped
   * reporting); `null`: the spawner cannot tell. */
  reachable?: boolean | null;
}

export interface CreateSessionOptions {
  sessionId: string;
  organizationId: string;
  profile?: Profile;
  ttlMs?: number;
  idleTimeoutMs?: number;
  env?: Record<string, string>;
}

export interface DestroyResult {
  destroyed: boolean;
  busy: boolean;
  error?: string;
}

export interface PinResult {
  ok: boolean;
  pinned: boolean;
}

export interface EnvResult {
  ok: boolean;
  /** Names refused by the deny-list (HOME, PATH, TMPDIR, *_proxy, TALE_RUNNERD_*). */
  denied: string[];
}

/** `TOO_LARGE`: a write to a raw stdin decoded to more than 1 MiB. */
export type StdinRefusal = "NOT_FOUND" | "STDIN_CLOSED" | "BAD_LINE" | "WRITE_FAILED" | "TOO_LARGE";

/**
 * How an exec's stdin is kept: `close` after the initial bytes, `hold` open for one JSON line per
 * write, `raw` open for any bytes (a pty exec's stdin is always raw).
 */
export type StdinMode = "close" | "hold" | "raw";

/** A pty size in character cells, each 1–1000 (the spawner refuses others with 400). */
export interface TerminalSize {
  cols: number;
  rows: number;
}

/** `ok: false` when no live exec has the id (`NOT_FOUND`) or it runs without a pty (`NOT_A_TERMINAL`). */
export interface ResizeResult {
  ok: boolean;
  reason?: "NOT_FOUND" | "NOT_A_TERMINAL";
}

export interface StdinResult {
  ok: boolean;
  reason?: StdinRefusal;
}

/** One of a session's live or retained execs (`listExecs`); `exitCode` null while running or when a signal ended it. */
export interface ExecSummary {
  execId: string;
  state: "running" | "exited";
  startedAtMs: number;
  exitCode: number | null;
  /** Present (true) for an exec on a pty. */
  pty?: boolean;
}

export interface CancelResult {
  killed: boolean;
}

export type ExecStatus =
  | { execId: string; state: "running"; startedAtMs: number }
  | { execId: string; state: "exited"; exitCode: number | null }
  | { execId: string; state: "gone" };

export interface StagedFile {
  path: string;
  bytes: number;
}

export interface SkippedPath {
  path: string;
  reason: string;
}

export interface StageResult {
  staged: StagedFile[];
  skipped: SkippedPath[];
}

export interface DeleteResult {
  deleted: string[];
  skipped: SkippedPath[];
}

/** What `upload`/`download` moved: files, bytes, and the paths left out (symlinks, special files). */
export interface CopyResult {
  files: number;
  bytes: number;
  skipped: string[];
}

export interface DirEntry {
  name: string;
  type: "file" | "dir" | "other";
  size: number;
  mtimeMs: number;
}

/** One file to stage: inline `content` (at most 1 MiB) or a `url` the session fetches. */
export interface StageFile {
  path: string;
  content?: string | Uint8Array;
  url?: string;
}

export interface CredentialResult {
  ok: boolean;
  existed?: boolean;
}

export interface GitCredential {
  /** `name[:port]`, as git sends it. */
  host: string;
  username: string;
  password: string;
  expiresAtMs?: number;
}

export interface ExecOptions {
  /** argv; exactly one of `command` and `shell`. */
  command?: string[];
  shell?: string;
  /** Defaults to a random id. */
  execId?: string;
  cwd?: string;
  env?: Record<string, string>;
  /** Written to stdin, which is then closed (unless `holdStdin`). */
  stdin?: string | Uint8Array;
  /** Keep stdin open for `writeStdin` (the same as `stdinMode: "hold"`). */
  holdStdin?: boolean;
  /** `raw` keeps stdin open for any bytes (no newline needed). */
  stdinMode?: StdinMode;
  /** Run on a terminal of this size: its output all arrives as `stdout`, its stdin is raw. */
  pty?: TerminalSize;
  timeoutMs?: number;
  /** Collect output into the result (default true; false = unlimited, live stream only). */
  collectOutput?: boolean;
}

export interface ExecuteOptions {
  command?: string[];
  shell?: string;
  organizationId?: string;
  files?: StageFile[];
  cwd?: string;
  env?: Record<string, string>;
  stdin?: string | Uint8Array;
  timeoutMs?: number;
}

/**
 * The `result` event. `stdoutBase64`/`stderrBase64` hold the collected output of a collecting
 * exec's first stream; they are empty on an attach (also a resumed one): the streamed output
 * events are the output then.
 */
export interface ExecResult {
  status: "completed" | "failed" | "cancelled";
  exitCode: number | null;
  durationMs: number;
  stdoutBase64: string;
  stderrBase64: string;
  truncated: { stdout: boolean; stderr: boolean };
  errorCode?: string;
  errorMessage?: string;
  reason?: "completed" | "failed" | "cancelled" | "timed_out" | "session_lost";
}

export type AgentSlug = "claude-code" | "opencode";

/** The normalized agent events (`type` tag, camelCase fields, absent fields omitted). */
export type AgentEventData =
  | { type: "run-started"; agent: AgentSlug; agentSessionId?: string; model?: string }
  | { type: "text-delta"; text: string; parentToolUseId?: string }
  | { type: "text"; text: string; parentToolUseId?: string }
  | { type: "tool-use"; toolUseId: string; toolName: string; input: unknown; parentToolUseId?: string }
  | { type: "tool-result"; toolUseId: string; output?: unknown; isError?: boolean; parentToolUseId?: string }
  | {
      type: "usage";
      model?: string;
      inputTokens: number;
      outputTokens: number;
      cacheReadTokens?: number;
      cacheWriteTokens?: number;
      costEstimateUsd?: number;
      parentToolUseId?: string;
    }
  | {
      type: "result";
      status: "completed" | "error" | "max-turns" | "cancelled";
      agentSessionId?: string;
      finalText?: string;
      durationMs?: number;
      usageTotals?: { inputTokens: number; outputTokens: number; costEstimateUsd?: number };
      isError?: boolean;
      apiErrorStatus?: unknown;
    }
  | { type: "error"; message: string; raw?: unknown }
  | { type: "raw"; agent: AgentSlug; payload: unknown };

export interface AgentRunOptions {
  agent: AgentSlug;
  prompt: string;
  /** The session's gateway virtual key. */
  gatewayToken: string;
  gatewayBaseUrl?: string;
  execId?: string;
  model?: string;
  agentSessionId?: string;
  maxTurns?: number;
  systemPromptAppend?: string;
  workdir?: string;
  browserMcp?: boolean;
  permissionMode?: "bypassPermissions" | "plan";
  timeoutMs?: number;
}

/** One event of an exec (or agent-run) stream, delivered once, in order. */
export type ExecEvent =
  | { type: "phase"; phase: string; seq: number | undefined }
  | { type: "stdout" | "stderr"; text: string; seq: number }
  /** Events `fromSeq..=toSeq` were evicted from the journal before this client read them: lost output. */
  | { type: "gap"; fromSeq: number; toSeq: number }
  | { type: "result"; result: ExecResult }
  /** The spawner lost its upstream (or the exec is unknown on attach); the stream ends. */
  | { type: "error"; message: string }
  /** A normalized agent event; `id` is `<seq>.<n>`. */
  | { type: "agent"; id: string; event: AgentEventData }
  /** An event this client version does not know. */
  | { type: "unknown"; name: string; id: string | undefined; data: unknown };

/** Everything a finished stream delivered. */
export interface ExecOutput {
  stdout: string;
  stderr: string;
  result: ExecResult | undefined;
  exitCode: number | null | undefined;
  gaps: { fromSeq: number; toSeq: number }[];
  agentEvents: { id: string; event: AgentEventData }[];
  error: string | undefined;
}
