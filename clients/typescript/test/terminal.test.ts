/**
 * Against the real spawner (local backend; started by tests/client_libraries.rs): pty execs,
 * resize and raw stdin.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { BadRequest, TaleClient, TaleError, type ExecEvent } from "../src/index.js";

const SPAWNER = process.env.TALE_TEST_SPAWNER_URL;
const live = Boolean(SPAWNER && process.env.SANDBOX_TOKEN);
const skip = live ? false : "live spawner not configured; run tests/client_libraries.rs";

// Prints the terminal's size, waits for a line typed at it, prints the size again.
const STTY_TWICE = "stty size; read line; stty size";
// Binary, not JSON, no newline: only raw stdin takes it.
const RAW_BYTES = new Uint8Array([0, 1, ...new TextEncoder().encode(" raw € "), 0xff, ...new TextEncoder().encode("no newline")]);

async function withSession(fn: (client: TaleClient, sessionId: string) => Promise<void>): Promise<void> {
  const client = new TaleClient({ baseUrl: SPAWNER! });
  const sessionId = `ts-tty-${randomBytes(4).toString("hex")}`;
  await client.createSession({ sessionId, organizationId: "ts-tests" });
  try {
    await fn(client, sessionId);
  } finally {
    await client.deleteSession(sessionId);
  }
}

/** Output text read from `events` (appended to `text`) until it contains `needle`. */
async function readUntil(events: AsyncIterator<ExecEvent>, text: string, needle: string): Promise<string> {
  for (;;) {
    const next = await events.next();
    if (next.done) throw new Error(`the stream ended before ${JSON.stringify(needle)} appeared: ${JSON.stringify(text)}`);
    if (next.value.type === "stdout") text += next.value.text;
    if (text.includes(needle)) return text;
  }
}

async function drain(events: AsyncIterator<ExecEvent>): Promise<void> {
  while (!(await events.next()).done);
}

test("a pty exec sees its resize; keys reach it through raw stdin; the exec list marks it", { skip }, async () => {
  await withSession(async (client, sid) => {
    const stream = client.exec(sid, { shell: STTY_TWICE, pty: { cols: 80, rows: 24 }, execId: "tty1" });
    const events = stream[Symbol.asyncIterator]();
    let text = await readUntil(events, "", "24 80");
    const listed = (await client.listExecs(sid)).map((e) => [e.execId, e.state, e.exitCode, e.pty]);
    assert.deepEqual(listed, [["tty1", "running", null, true]]);
    assert.deepEqual(await client.resize(sid, "tty1", 100, 30), { ok: true });
    // A typed carriage return ends `read`.
    assert.ok((await client.writeStdin(sid, "tty1", new Uint8Array([13]))).ok);
    text = await readUntil(events, text, "30 100");
    assert.ok(text.indexOf("24 80") < text.indexOf("30 100"), text);
    await drain(events);
    assert.equal(stream.result?.exitCode, 0);
    assert.deepEqual((await client.listExecs(sid)).map((e) => [e.state, e.exitCode]), [["exited", 0]]);
    // The exec is gone now: a resize names why it did nothing.
    assert.deepEqual(await client.resize(sid, "tty1", 90, 20), { ok: false, reason: "NOT_FOUND" });
  });
});

test("raw stdin: binary bytes without newline reach cat", { skip }, async () => {
  await withSession(async (client, sid) => {
    const stream = client.exec(sid, { command: ["cat"], stdinMode: "raw", execId: "rawcat" });
    const events = stream[Symbol.asyncIterator]();
    assert.equal((await events.next()).value?.type, "phase");
    assert.ok((await client.writeStdin(sid, "rawcat", RAW_BYTES)).ok);
    // cat prints them before EOF: nothing waited for a newline.
    await readUntil(events, "", "no newline");
    assert.ok((await client.writeStdin(sid, "rawcat", undefined, { eof: true })).ok);
    await drain(events);
    assert.equal(stream.result?.exitCode, 0);
    assert.deepEqual(new Uint8Array(Buffer.from(stream.result!.stdoutBase64, "base64")), RAW_BYTES);
  });
});

test("terminal refusals: a pipe exec, a size out of bounds, a pty with held stdin", { skip }, async () => {
  await withSession(async (client, sid) => {
    const stream = client.exec(sid, { command: ["cat"], stdinMode: "raw", execId: "pipes" });
    const events = stream[Symbol.asyncIterator]();
    await events.next();
    assert.deepEqual((await client.listExecs(sid)).map((e) => [e.execId, e.pty ?? false]), [["pipes", false]]);
    assert.deepEqual(await client.resize(sid, "pipes", 80, 24), { ok: false, reason: "NOT_A_TERMINAL" });
    await assert.rejects(client.resize(sid, "pipes", 1001, 24), (err: unknown) => {
      assert.ok(err instanceof BadRequest);
      assert.equal(err.code, "bad_request");
      return true;
    });
    assert.ok((await client.cancel(sid, "pipes")).killed);
    await drain(events);
    await assert.rejects(client.run(sid, { command: ["true"], pty: { cols: 80, rows: 24 }, stdinMode: "hold" }), BadRequest);
    assert.throws(() => client.exec(sid, { command: ["true"], holdStdin: true, stdinMode: "raw" }), TaleError);
  });
});
