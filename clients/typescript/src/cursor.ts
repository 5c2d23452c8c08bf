/**
 * Position within one exec's stream: turns SSE frames into typed events, drops what an earlier
 * connection already delivered, and says where a new connection resumes so that no byte is lost
 * or repeated.
 *
 * Agent streams resume at the last id (`N` or `N.k`): the spawner replays the exec from its start
 * and sends only what lies after it. Plain exec streams resume a few characters before the last
 * output delivered: older spawners decoded each connection's output with a fresh UTF-8 decoder, so
 * a character straddling the resume point was mangled (current ones rebuild it themselves);
 * replaying 5 characters (at least 4 bytes, more than the 3 a cut character leaves pending) keeps
 * both right.
 */
import type { ExecEvent, ExecResult, AgentEventData } from "./types.js";
import type { SseFrame } from "./sse.js";

export const RESYNC_CHARS = 5;
export const RESYNC_EVENTS = 64;

type Position = [number, number];

function after(a: Position, b: Position): boolean {
  return a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]);
}

export function parsePosition(text: string | undefined): Position | undefined {
  if (text === undefined) return undefined;
  const match = /^\s*(\d+)(?:\.(\d+))?\s*$/.exec(text);
  if (!match) return undefined;
  return [Number(match[1]), match[2] === undefined ? 0 : Number(match[2])];
}

function codePoints(text: string): number {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
}

function num(value: unknown): number {
  return typeof value === "number" && Number.isFinite(value) ? value : 0;
}

export class Cursor {
  position: Position;
  finished = false;
  private readonly recent: Record<"stdout" | "stderr", [number, number][]> = { stdout: [], stderr: [] };
  private readonly flushed = new Set<string>();

  constructor(
    readonly agent = false,
    sinceSeq = 0,
  ) {
    this.position = [sinceSeq, 0];
  }

  get lastSeq(): number {
    return this.position[0];
  }

  /** The `Last-Event-ID` of the next connection (undefined = from the start). */
  resumeId(): string | undefined {
    if (this.agent) {
      const [seq, sub] = this.position;
      if (seq === 0 && sub === 0) return undefined;
      return sub ? `${seq}.${sub}` : String(seq);
    }
    let point = this.lastSeq;
    for (const recent of Object.values(this.recent)) {
      if (recent.length > 0) point = Math.min(point, recent[0]![0] - 1);
    }
    return String(Math.max(point, 0));
  }

  private remember(stream: "stdout" | "stderr", seq: number, text: string): void {
    const recent = this.recent[stream];
    recent.push([seq, codePoints(text)]);
    if (recent.length > RESYNC_EVENTS) recent.shift();
    while (recent.length > 1 && recent.slice(1).reduce((sum, [, n]) => sum + n, 0) >= RESYNC_CHARS) {
      recent.shift();
    }
  }

  private isNew(position: Position): boolean {
    if (!after(position, this.position)) return false;
    this.position = position;
    return true;
  }

  /** The typed event of `frame`, or undefined when an earlier connection delivered it. */
  accept(frame: SseFrame): ExecEvent | undefined {
    let data: unknown;
    try {
      data = JSON.parse(frame.data);
    } catch {
      data = frame.data;
    }
    const fields = (typeof data === "object" && data !== null ? data : {}) as Record<string, unknown>;
    const position = parsePosition(frame.id);
    switch (frame.event) {
      case "result":
        this.finished = true;
        return { type: "result", result: fields as unknown as ExecResult };
      case "error":
        this.finished = true;
        return { type: "error", message: String(fields.message ?? frame.data) };
      case "gap": {
        const toSeq = num(fields.toSeq);
        if (toSeq <= this.lastSeq) return undefined;
        const fromSeq = Math.max(num(fields.fromSeq), this.lastSeq + 1);
        this.position = [toSeq, 0];
        return { type: "gap", fromSeq, toSeq };
      }
      case "stdout":
      case "stderr": {
        const name = frame.event;
        const text = String(fields.text ?? "");
        if (position === undefined) {
          // The flush of a character cut at the very end, sent before the result: once.
          const key = `${name}:${num(fields.seq)}`;
          if (this.flushed.has(key)) return undefined;
          this.flushed.add(key);
          return { type: name, text, seq: num(fields.seq) };
        }
        if (!this.isNew(position)) return undefined;
        this.remember(name, position[0], text);
        return { type: name, text, seq: position[0] };
      }
      case "phase":
        if (position !== undefined && !this.isNew(position)) return undefined;
        return { type: "phase", phase: String(fields.phase ?? ""), seq: position?.[0] };
      case "agent":
        if (position !== undefined && !this.isNew(position)) return undefined;
        return { type: "agent", id: frame.id ?? "", event: fields as unknown as AgentEventData };
      default:
        if (position !== undefined && !this.isNew(position)) return undefined;
        return { type: "unknown", name: frame.event, id: frame.id, data };
    }
  }
}
