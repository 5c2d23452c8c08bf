/**
 * Against the real spawner (local backend; started by tests/client_libraries.rs): every route,
 * resumable streams through a proxy that cuts connections mid-stream, the nonce, typed errors,
 * agent runs with the real Claude Code CLI against the scripted model.
 */
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { createHash, createHmac, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import {
  Conflict,
  NotFound,
  TaleClient,
  Unauthorized,
  signingString,
  type ExecEvent,
  type ExecStream,
} from "../src/index.js";

const SPAWNER = process.env.TALE_TEST_SPAWNER_URL;
// Proxies that cut each connection after a few KiB (more on each later connection): one per test
// that streams through one, so that every such test sees fresh, small thresholds.
const PROXIES = (process.env.TALE_TEST_CUT_PROXY_URLS ?? "").split(",").filter(Boolean);
const TOKEN = process.env.SANDBOX_TOKEN;
const live = Boolean(SPAWNER && PROXIES.length >= 3 && TOKEN);
const skip = live ? false : "live spawner not configured; run tests/client_libraries.rs";

// Output written line by line with multi-byte characters, some cut in two by separate writes, so
// that connection cuts land inside frames and between the halves of a character.
const LINES = 300;
const PRODUCER =
  `for i in $(seq 1 ${LINES}); do ` +
  "printf 'line %04d ünïcödé € ' \"$i\"; " +
  "if [ $((i % 7)) = 0 ]; then printf '\\360\\237'; sleep 0.003; printf '\\230\\200'; fi; " +
  "printf '😀\\n'; " +
  'if [ $((i % 50)) = 0 ]; then echo "stderr $i" >&2; fi; ' +
  "sleep 0.002; done";

function expectedStdout(): string {
  let out = "";
  for (let i = 1; i <= LINES; i++) out += `line ${String(i).padStart(4, "0")} ünïcödé € ${i % 7 === 0 ? "😀" : ""}😀\n`;
  return out;
}

function expectedStderr(): string {
  let out = "";
  for (let i = 50; i <= LINES; i += 50) out += `stderr ${i}\n`;
  return out;
}

const id = (prefix: string) => `${prefix}-${randomBytes(4).toString("hex")}`;
let client: TaleClient;

before(() => {
  if (!live) return;
  client = new TaleClient({ baseUrl: SPAWNER! });
});

async function withSession(fn: (sessionId: string) => Promise<void>, profile?: "agent"): Promise<void> {
  const sessionId = id("ts");
  await client.createSession({ sessionId, organizationId: "ts-tests", ...(profile ? { profile } : {}) });
  try {
    await fn(sessionId);
  } finally {
    await client.deleteSession(sessionId);
  }
}

/** Reads events until `stop` matches (inclusive). */
async function until(events: AsyncIterator<ExecEvent>, stop: (e: ExecEvent) => boolean): Promise<ExecEvent[]> {
  const seen: ExecEvent[] = [];
  for (;;) {
    const next = await events.next();
    if (next.done) throw new Error(`stream ended before the expected event: ${JSON.stringify(seen)}`);
    seen.push(next.value);
    if (stop(next.value)) return seen;
  }
}

// Held stdin (`holdStdin`) takes one JSON line per write; raw stdin is tested in terminal.test.ts.
const LINE_ONE = '{"line":1}\n';
const KEY = '{"key":"k"}\n';

const text = (events: ExecEvent[]) => events.map((e) => (e.type === "stdout" ? e.text : "")).join("");

test("session lifecycle: create, get, list, pin, env, duplicate, if_idle, delete", { skip }, async () => {
  const sessionId = id("ts-life");
  const org = id("org");
  const info = await client.createSession({ sessionId, organizationId: org, env: { GREETING: "hi" }, idleTimeoutMs: 600_000 });
  try {
    assert.deepEqual([info.sessionId, info.organizationId, info.state, info.idleTimeoutMs], [sessionId, org, "ready", 600_000]);
    await assert.rejects(client.createSession({ sessionId, organizationId: org }), (err: unknown) => {
      assert.ok(err instanceof Conflict);
      assert.equal(err.code, "duplicate");
      return true;
    });
    assert.equal((await client.getSession(sessionId)).sessionId, sessionId);
    assert.deepEqual((await client.listSessions(org)).map((s) => s.sessionId), [sessionId]);
    assert.equal((await client.pinSession(sessionId, true)).pinned, true);
    assert.equal((await client.getSession(sessionId)).pinned, true);
    assert.equal((await client.pinSession(sessionId, false)).pinned, false);
    const env = await client.patchEnv(sessionId, { set: { EXTRA: "x y", PATH: "/nope" }, unset: ["GREETING"] });
    assert.deepEqual([env.ok, env.denied], [true, ["PATH"]]);
    const out = await client.run(sessionId, { shell: 'echo "${GREETING:-unset} $EXTRA"' });
    assert.deepEqual([out.stdout, out.exitCode], ["unset x y\n", 0]);
    const sleeper = client.exec(sessionId, { command: ["sleep", "30"], execId: "sleeper" });
    const events = sleeper[Symbol.asyncIterator]();
    await until(events, (e) => e.type === "phase");
    assert.deepEqual(await client.deleteSession(sessionId, { ifIdle: true }), { destroyed: false, busy: true });
    assert.equal((await client.cancel(sessionId, "sleeper")).killed, true);
    const rest = await until(events, (e) => e.type === "result");
    const last = rest[rest.length - 1]!;
    assert.ok(last.type === "result" && last.result.status === "cancelled");
  } finally {
    const gone = await client.deleteSession(sessionId);
    assert.deepEqual([gone.destroyed, gone.busy], [true, false]);
  }
  await assert.rejects(client.getSession(sessionId), (err: unknown) => {
    assert.ok(err instanceof NotFound);
    assert.deepEqual([err.status, err.code], [404, "not_found"]);
    return true;
  });
});

test("exec: result, stdin, status, cancel", { skip }, async () => {
  await withSession(async (sid) => {
    const out = await client.run(sid, { shell: "echo out; echo err >&2; exit 3", execId: "e3" });
    assert.deepEqual([out.stdout, out.stderr, out.exitCode], ["out\n", "err\n", 3]);
    assert.deepEqual([out.result?.status, out.result?.reason], ["failed", "failed"]);
    assert.equal(Buffer.from(out.result!.stdoutBase64, "base64").toString(), "out\n");
    assert.deepEqual(await client.execStatus(sid, "e3"), { execId: "e3", state: "exited", exitCode: 3 });
    assert.equal((await client.execStatus(sid, "never-ran")).state, "gone");
    assert.equal((await client.run(sid, { command: ["cat"], stdin: "given\n" })).stdout, "given\n");
    const cat = client.exec(sid, { command: ["cat"], holdStdin: true, execId: "cat1" });
    const events = cat[Symbol.asyncIterator]();
    await until(events, (e) => e.type === "phase");
    assert.equal((await client.execStatus(sid, "cat1")).state, "running");
    assert.ok((await client.writeStdin(sid, "cat1", LINE_ONE)).ok);
    assert.ok((await client.writeStdin(sid, "cat1", undefined, { eof: true })).ok);
    const rest = await until(events, (e) => e.type === "result");
    assert.equal(text(rest), LINE_ONE);
    assert.equal(cat.result?.exitCode, 0);
    const refused = await client.writeStdin(sid, "cat1", LINE_ONE);
    assert.equal(refused.ok, false);
    assert.ok(refused.reason === "NOT_FOUND" || refused.reason === "STDIN_CLOSED");
  });
});

test("identical stdin bodies in one millisecond are both accepted (nonce)", { skip }, async () => {
  await withSession(async (sid) => {
    const frozen = Date.now();
    const fixed = new TaleClient({ baseUrl: SPAWNER!, clock: () => frozen });
    const cat = fixed.exec(sid, { command: ["cat"], holdStdin: true, execId: "keys" });
    const events = cat[Symbol.asyncIterator]();
    await until(events, (e) => e.type === "phase");
    const [first, second] = await Promise.all([fixed.writeStdin(sid, "keys", KEY), fixed.writeStdin(sid, "keys", KEY)]);
    assert.ok(first.ok && second.ok);
    // The same request without a nonce: the second copy is refused as a replay.
    const body = new TextEncoder().encode(JSON.stringify({ b64: Buffer.from(KEY).toString("base64") }));
    const path = `/v1/sessions/${sid}/exec/keys/stdin`;
    const stamp = String(Date.now());
    const signature = createHmac("sha256", TOKEN!).update(await signingString("POST", path, stamp, undefined, body)).digest("hex");
    const statuses: number[] = [];
    for (let i = 0; i < 2; i++) {
      const response = await fetch(SPAWNER + path, {
        method: "POST",
        body,
        headers: { "x-tale-sandbox-signature": signature, "x-tale-sandbox-timestamp": stamp, "content-type": "application/json" },
      });
      await response.arrayBuffer();
      statuses.push(response.status);
    }
    assert.deepEqual(statuses, [200, 401]);
    assert.ok((await fixed.writeStdin(sid, "keys", undefined, { eof: true })).ok);
    const rest = await until(events, (e) => e.type === "result");
    assert.equal(text(rest), KEY.repeat(3));
  });
});

test("a stream resumes through cut connections and delivers everything exactly once", { skip }, async () => {
  await withSession(async (sid) => {
    const cut = new TaleClient({ baseUrl: PROXIES[0]! });
    const stream: ExecStream = cut.exec(sid, { shell: PRODUCER, execId: "producer", collectOutput: false });
    const out = await stream.collect();
    assert.ok(stream.reconnects >= 3, `the proxy cut the stream only ${stream.reconnects} times`);
    assert.deepEqual(out.gaps, []);
    assert.equal(out.stdout, expectedStdout());
    assert.equal(out.stderr, expectedStderr());
    assert.equal(out.exitCode, 0);
    // Reattaching later (also through cuts, on a fresh proxy) replays the same output.
    const replay = await new TaleClient({ baseUrl: PROXIES[2]! }).attach(sid, "producer").collect();
    assert.equal(replay.stdout, expectedStdout());
    assert.equal(replay.stderr, expectedStderr());
  });
});

test("files and git credentials", { skip }, async () => {
  await withSession(async (sid) => {
    const blob = new Uint8Array(1024).map((_, i) => i % 256);
    const staged = await client.stageFiles(sid, [
      { path: "dir/blob.bin", content: blob },
      { path: "a.txt", content: "A" },
    ]);
    assert.deepEqual(
      staged.staged.map((f) => [f.path, f.bytes]).sort(),
      [
        ["a.txt", 1],
        ["dir/blob.bin", 1024],
      ],
    );
    assert.deepEqual(await client.readFile(sid, "dir/blob.bin"), blob);
    const names = (await client.listFiles(sid)).map((e) => `${e.name}:${e.type}`);
    assert.ok(names.includes("a.txt:file") && names.includes("dir:dir"), names.join());
    assert.deepEqual((await client.listFiles(sid, "dir")).map((e) => e.size), [1024]);
    assert.deepEqual((await client.deleteFiles(sid, ["a.txt", "missing.txt"])).deleted.sort(), ["a.txt", "missing.txt"]);
    await assert.rejects(client.readFile(sid, "a.txt"), NotFound);
    assert.ok((await client.grantGitCredential(sid, { host: "git.example:8443", username: "bot", password: "s3cret" })).ok);
    assert.equal((await client.revokeGitCredential(sid, "git.example:8443")).existed, true);
    assert.equal((await client.revokeGitCredential(sid, "git.example:8443")).existed, false);
  });
});

/** Bytes no two chunks of which are alike, so a misplaced chunk cannot pass. */
function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let block = 0;
  for (let at = 0; at < length; block++) {
    const digest = createHash("sha256").update(`${seed}:${block}`).digest();
    out.set(digest.subarray(0, Math.min(digest.length, length - at)), at);
    at += digest.length;
  }
  return out;
}

async function makeTree(root: string): Promise<void> {
  await mkdir(join(root, "src", "deep", "er"), { recursive: true });
  await writeFile(join(root, "README.md"), "# hi\n");
  await writeFile(join(root, "src", "empty"), "");
  await writeFile(join(root, "src", "one-chunk.bin"), pattern(1024 * 1024, 2));
  await writeFile(join(root, "src", "deep", "two.bin"), pattern(2 * 1024 * 1024 + 1, 3));
  await writeFile(join(root, "src", "deep", "er", "café.txt"), "café\n");
}

async function tree(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const full = join(entry.parentPath, entry.name);
    out[relative(root, full)] = createHash("sha256").update(await readFile(full)).digest("hex");
  }
  return out;
}

test("upload and download of any size: a 5 MiB file and a tree, byte-exact", { skip }, async () => {
  const scratch = await mkdtemp(join(tmpdir(), "tale-ts-cp-"));
  try {
    await withSession(async (sessionId) => {
      const big = pattern(5 * 1024 * 1024 + 7, 1);
      await writeFile(join(scratch, "big.bin"), big);
      const up = await client.upload(sessionId, join(scratch, "big.bin"), "in/big.bin");
      assert.deepEqual([up.files, up.bytes], [1, big.length]);
      assert.deepEqual(
        (await client.listFiles(sessionId, "in")).map((e) => [e.name, e.size]),
        [["big.bin", big.length]],
      );
      await client.download(sessionId, "in/big.bin", join(scratch, "big.down"));
      assert.ok(Buffer.from(await readFile(join(scratch, "big.down"))).equals(Buffer.from(big)));
      await makeTree(join(scratch, "up"));
      assert.equal((await client.upload(sessionId, join(scratch, "up"), "tree")).files, 5);
      assert.equal((await client.download(sessionId, "tree", join(scratch, "back"))).files, 5);
      assert.deepEqual(await tree(join(scratch, "back")), await tree(join(scratch, "up")));
      await assert.rejects(client.download(sessionId, "nope.bin", join(scratch, "nope")), NotFound);
      assert.deepEqual((await readdir(scratch)).includes("nope"), false, "no half-written file is left");
    });
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
});

test("one-shot execute", { skip }, async () => {
  const out = await client.execute({ shell: "cat in.txt; echo", files: [{ path: "in.txt", content: "staged" }] }).collect();
  assert.deepEqual([out.stdout, out.exitCode], ["staged\n", 0]);
});

test("a wrong token is unauthorized", { skip }, async () => {
  const wrong = new TaleClient({ baseUrl: SPAWNER!, token: "not-the-token" });
  await assert.rejects(wrong.listSessions(), (err: unknown) => {
    assert.ok(err instanceof Unauthorized);
    assert.equal(err.code, "unauthorized");
    return true;
  });
});

test("an agent run resumes through cut connections; steer; reattach yields the same events", { skip }, async () => {
  const modelUrl = process.env.TALE_TEST_MODEL_URL;
  const gatewayToken = process.env.TALE_TEST_GATEWAY_TOKEN;
  assert.ok(modelUrl && gatewayToken, "TALE_TEST_MODEL_URL and TALE_TEST_GATEWAY_TOKEN are set");
  await withSession(async (sid) => {
    const cut = new TaleClient({ baseUrl: PROXIES[1]! });
    const stream = cut.startAgentRun(sid, {
      agent: "claude-code",
      prompt: "Write the proof file, then say done.",
      gatewayToken,
      gatewayBaseUrl: modelUrl,
      model: "tale-e2e-model",
      maxTurns: 5,
      execId: "agent1",
      timeoutMs: 120_000,
    });
    const agentEvents: { id: string; event: unknown }[] = [];
    let results = 0;
    for await (const event of stream) {
      if (event.type !== "agent") continue;
      agentEvents.push({ id: event.id, event: event.event });
      if (event.event.type === "result") {
        results += 1;
        if (results === 1) assert.ok((await cut.steerAgentRun(sid, "agent1", { agent: "claude-code", text: "STEER: more" })).ok);
        if (results === 2) assert.ok((await cut.steerAgentRun(sid, "agent1", { agent: "claude-code", eof: true })).ok);
      }
    }
    assert.equal(stream.result?.exitCode, 0);
    const types = agentEvents.map((e) => (e.event as { type: string }).type);
    assert.equal(types[0], "run-started");
    assert.ok(types.includes("tool-use"));
    assert.equal(types.filter((t) => t === "result").length, 2);
    assert.equal(new Set(agentEvents.map((e) => e.id)).size, agentEvents.length, "no agent event twice");
    const replay = await cut.attachAgentRun(sid, "agent1", { agent: "claude-code" }).collect();
    assert.deepEqual(replay.agentEvents, agentEvents);
    assert.equal(new TextDecoder().decode(await client.readFile(sid, "proof.txt")), "tale-was-here\n");
  }, "agent");
});

test("a character cut at the resume point arrives whole", { skip }, async () => {
  // The proxy cuts right after the frame that holds the first half of a 4-byte character: the
  // resumed connection must still deliver it whole (a resume at the last seq would hand the
  // spawner's fresh decoder a bare second half: two U+FFFD).
  const splitUrl = process.env.TALE_TEST_SPLIT_PROXY_URL;
  assert.ok(splitUrl, "TALE_TEST_SPLIT_PROXY_URL is set");
  const split = new TaleClient({ baseUrl: splitUrl });
  await withSession(async (sid) => {
    for (let attempt = 0; attempt < 5; attempt++) {
      const marker = `split-${attempt}:`;
      const shell = `printf '${marker}\\360\\237'; sleep 0.3; printf '\\230\\200 done\\n'`;
      const stream = split.exec(sid, { shell, execId: `split${attempt}`, collectOutput: false });
      const outputs: string[] = [];
      for await (const event of stream) if (event.type === "stdout") outputs.push(event.text);
      assert.equal(outputs.join(""), `${marker}😀 done\n`);
      assert.equal(stream.reconnects, 1);
      if (outputs.includes(marker)) return; // two chunks, and the cut fell between them
    }
    assert.fail("runnerd never read the two halves of the character separately");
  });
});
