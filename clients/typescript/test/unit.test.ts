/**
 * Unit tests without a spawner: signing vectors, the SSE parser, the resume cursor, and the client
 * against a scripted HTTP server (resume after a cut, gaps, retry-after).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeServer, jsonReply, sseComplete, sseThenCut } from "./fake-server.js";
import { Cursor } from "../src/cursor.js";
import { SseParser } from "../src/sse.js";
import { TaleClient, TooManyRequests, Unavailable, sign, signingString, type ExecEvent } from "../src/index.js";

const TOKEN = "unit-token";
const enc = new TextEncoder();

function frame(name: string, data: unknown, id?: string | number): string {
  return `event: ${name}\n${id !== undefined ? `id: ${id}\n` : ""}data: ${JSON.stringify(data)}\n\n`;
}

test("signatures match the spawner's own vectors", async () => {
  assert.equal(
    await sign("k", "GET", "/v1/sessions", "1000", undefined, new Uint8Array()),
    "b852693acbd1b6e3623f1d704c47ba581fa97ca66f71d37016f7d8bbb5e64aed",
  );
  assert.equal(
    await signingString("POST", "/p", "5", "n", enc.encode("{}")),
    "POST\n/p\n5\nn\n44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
  );
});

test("the SSE parser survives any chunking, even inside a character", () => {
  const stream = enc.encode(
    frame("stdout", { text: "é😀", seq: 3 }, 3) + ": keepalive\n\n" + frame("gap", { fromSeq: 4, toSeq: 6 }),
  );
  for (const size of [1, 2, 5, stream.length]) {
    const parser = new SseParser();
    const frames = [];
    for (let i = 0; i < stream.length; i += size) frames.push(...parser.feed(stream.subarray(i, i + size)));
    assert.deepEqual(
      frames.map((f) => [f.event, f.id]),
      [
        ["stdout", "3"],
        ["gap", undefined],
      ],
    );
    assert.equal(JSON.parse(frames[0]!.data).text, "é😀");
  }
});

test("the cursor drops repeats, clips gaps and resumes a few characters early", () => {
  const c = new Cursor();
  const out = (seq: number, text: string, name = "stdout") => ({ event: name, id: String(seq), data: JSON.stringify({ text, seq }) });
  assert.equal(c.accept({ event: "phase", id: "1", data: '{"phase":"running"}' })?.type, "phase");
  assert.equal(c.resumeId(), "1");
  assert.deepEqual(c.accept(out(2, "ab")), { type: "stdout", text: "ab", seq: 2 });
  c.accept(out(3, "cd"));
  assert.equal(c.resumeId(), "1", "only 4 characters so far: replay from the stream's start");
  c.accept(out(4, "efgh"));
  assert.equal(c.resumeId(), "2", "chunks 3 and 4 hold 6 characters");
  c.accept(out(5, "x", "stderr"));
  assert.equal(c.resumeId(), "2");
  assert.equal(c.accept(out(3, "cd")), undefined, "a replayed chunk is dropped");
  assert.equal(c.accept({ event: "gap", id: undefined, data: '{"fromSeq":2,"toSeq":5}' }), undefined);
  assert.deepEqual(c.accept({ event: "gap", id: undefined, data: '{"fromSeq":2,"toSeq":9}' }), {
    type: "gap",
    fromSeq: 6,
    toSeq: 9,
  });
  const flush = { event: "stdout", id: undefined, data: '{"text":"\\ufffd","seq":10}' };
  assert.notEqual(c.accept(flush), undefined);
  assert.equal(c.accept(flush), undefined, "the end-of-stream flush is delivered once");
  assert.equal(c.accept({ event: "result", id: "10", data: '{"status":"completed"}' })?.type, "result");
  assert.ok(c.finished);

  const agent = new Cursor(true);
  assert.equal(agent.resumeId(), undefined);
  agent.accept({ event: "agent", id: "4.2", data: '{"type":"text","text":"hi"}' });
  assert.equal(agent.resumeId(), "4.2");
  assert.equal(agent.accept({ event: "agent", id: "4.1", data: '{"type":"text","text":"old"}' }), undefined);
});

test("a stream cut mid-frame resumes by attach; the repeat is dropped and the gap typed", async () => {
  let first = frame("phase", { phase: "running" }, 1) + frame("stdout", { text: "héllo ", seq: 2 }, 2);
  first += frame("stdout", { text: "lost?", seq: 3 }, 3).slice(0, 12);
  const replay =
    frame("stdout", { text: "héllo ", seq: 2 }, 2) +
    frame("gap", { fromSeq: 3, toSeq: 5 }) +
    frame("stdout", { text: "world", seq: 6 }, 6) +
    frame("result", { status: "completed", exitCode: 0, durationMs: 1, stdoutBase64: "", stderrBase64: "", truncated: { stdout: false, stderr: false } }, 7);
  const server = await new FakeServer([sseThenCut(first), sseComplete(replay)]).start();
  try {
    const client = new TaleClient({ baseUrl: server.url, token: TOKEN });
    const stream = client.exec("s1", { command: ["true"], execId: "e1" });
    const events: ExecEvent[] = [];
    for await (const event of stream) events.push(event);
    assert.deepEqual(
      events.map((e) => e.type),
      ["phase", "stdout", "gap", "stdout", "result"],
    );
    assert.deepEqual(events[2], { type: "gap", fromSeq: 3, toSeq: 5 });
    assert.equal(stream.reconnects, 1);
    assert.equal(stream.result?.exitCode, 0);
    const [start, attach] = server.seen;
    assert.deepEqual([start!.method, start!.path], ["POST", "/v1/sessions/s1/exec"]);
    assert.deepEqual([attach!.method, attach!.path], ["GET", "/v1/sessions/s1/exec/e1/attach"]);
    assert.equal(attach!.headers["last-event-id"], "1");
    for (const seen of server.seen) {
      const expected = await sign(
        TOKEN,
        seen.method,
        seen.path,
        seen.headers["x-tale-sandbox-timestamp"]!,
        seen.headers["x-tale-sandbox-nonce"],
        seen.body,
      );
      assert.equal(seen.headers["x-tale-sandbox-signature"], expected);
      assert.equal(seen.headers["x-tale-sandbox-nonce"]!.length, 32);
    }
  } finally {
    await server.stop();
  }
});

test("a create answered 503 create_in_progress is sent again after retry-after; beyond the policy it throws", async () => {
  const inProgress = { error: "create_in_progress", message: "retry in 1 s" };
  let server = await new FakeServer([
    jsonReply(503, inProgress, "retry-after: 0\r\n"),
    jsonReply(201, { session: { sessionId: "a", organizationId: "o", state: "ready" } }),
  ]).start();
  try {
    const client = new TaleClient({ baseUrl: server.url, token: TOKEN });
    const session = await client.createSession({ sessionId: "a", organizationId: "o" });
    assert.equal(session.state, "ready");
    assert.equal(server.seen.length, 2);
  } finally {
    await server.stop();
  }
  server = await new FakeServer([jsonReply(503, inProgress, "retry-after: 25\r\n")]).start();
  try {
    const client = new TaleClient({ baseUrl: server.url, token: TOKEN, retry: { maxWaitMs: 5000 } });
    await assert.rejects(client.createSession({ sessionId: "a", organizationId: "o" }), (err: unknown) => {
      assert.ok(err instanceof Unavailable);
      assert.equal(err.code, "create_in_progress");
      assert.equal(err.retryAfter, 25);
      return true;
    });
  } finally {
    await server.stop();
  }
});

test("retry-after is honoured (re-signed) and bounded; errors carry code and wait", async () => {
  const busy = { error: "overloaded", message: "whatever the text" };
  let server = await new FakeServer([
    jsonReply(503, busy, "retry-after: 0\r\n"),
    jsonReply(429, busy, "retry-after: 0\r\n"),
    jsonReply(200, { sessions: [] }),
  ]).start();
  try {
    const client = new TaleClient({ baseUrl: server.url, token: TOKEN });
    assert.deepEqual(await client.listSessions(), []);
    assert.equal(new Set(server.seen.map((s) => s.headers["x-tale-sandbox-nonce"])).size, 3);
  } finally {
    await server.stop();
  }
  server = await new FakeServer([jsonReply(429, { error: "session_quota" }, "retry-after: 100\r\n")]).start();
  try {
    const client = new TaleClient({ baseUrl: server.url, token: TOKEN, retry: { maxWaitMs: 5000 } });
    await assert.rejects(client.createSession({ sessionId: "a", organizationId: "o" }), (err: unknown) => {
      assert.ok(err instanceof TooManyRequests);
      assert.equal(err.code, "session_quota");
      assert.equal(err.retryAfter, 100);
      return true;
    });
  } finally {
    await server.stop();
  }
  server = await new FakeServer([jsonReply(503, busy)]).start();
  try {
    const client = new TaleClient({ baseUrl: server.url, token: TOKEN });
    await assert.rejects(client.getSession("a"), (err: unknown) => {
      assert.ok(err instanceof Unavailable);
      assert.equal(err.code, "overloaded");
      assert.equal(err.retryAfter, undefined);
      return true;
    });
  } finally {
    await server.stop();
  }
});
