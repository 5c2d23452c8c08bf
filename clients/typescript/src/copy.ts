/**
 * Files and directory trees of any size between this machine (Node) and a session, in pieces:
 * chunked writes up (`POST …/files/write`, the last chunk commits) and ranged reads down
 * (`GET …/files/content?offset=&length=`; a short piece is the end). `node:fs` and `node:path` are
 * loaded only when a copy runs, so the rest of the client stays free of Node-only imports.
 */
import { NotFound } from "./errors.js";
import type { CopyResult, DirEntry } from "./types.js";

/** Bytes per uploaded chunk: under the spawner's default 2 MiB request body cap. */
export const WRITE_CHUNK_BYTES = 1024 * 1024;
/** Bytes asked for per ranged read. */
export const READ_CHUNK_BYTES = 4 * 1024 * 1024;
/** Deepest directory tree copied (either way). */
export const MAX_COPY_DEPTH = 64;

/** The two routes a copy needs (implemented by `TaleClient`). */
export interface ChunkRoutes {
  writeChunk(sessionId: string, path: string, offset: number, data: Uint8Array, commit: boolean): Promise<number>;
  readRange(sessionId: string, path: string, offset: number, length: number): Promise<Uint8Array>;
  listFiles(sessionId: string, path?: string): Promise<DirEntry[]>;
}

const join = (remote: string, name: string): string => `${remote.replace(/\/+$/, "")}/${name}`;

/** Whether a name listed by the session may become a local path component. */
export function safeName(name: string): boolean {
  return name !== "" && name !== "." && name !== ".." && !name.includes("/") && !name.includes("\0");
}

export async function upload(
  routes: ChunkRoutes,
  sessionId: string,
  localPath: string,
  remotePath: string,
): Promise<CopyResult> {
  const fs = await import("node:fs/promises");
  const path = await import("node:path");
  const result: CopyResult = { files: 0, bytes: 0, skipped: [] };
  const walk = async (local: string, remote: string, depth: number): Promise<void> => {
    const stat = await fs.lstat(local);
    if (stat.isFile()) {
      const handle = await fs.open(local, "r");
      try {
        let offset = 0;
        let data = await readFull(handle);
        for (;;) {
          const following = data.length === WRITE_CHUNK_BYTES ? await readFull(handle) : new Uint8Array(0);
          const last = following.length === 0;
          await routes.writeChunk(sessionId, remote, offset, data, last);
          offset += data.length;
          if (last) break;
          data = following;
        }
        result.files += 1;
        result.bytes += offset;
      } finally {
        await handle.close();
      }
    } else if (stat.isDirectory()) {
      if (depth >= MAX_COPY_DEPTH) throw new Error(`${local}: deeper than ${MAX_COPY_DEPTH} directories`);
      for (const name of (await fs.readdir(local)).sort()) {
        await walk(path.join(local, name), join(remote, name), depth + 1);
      }
    } else {
      result.skipped.push(local);
    }
  };
  await walk(localPath, remotePath, 0);
  return result;
}

async function readFull(handle: import("node:fs/promises").FileHandle): Promise<Uint8Array> {
  const buffer = new Uint8Array(WRITE_CHUNK_BYTES);
  let filled = 0;
  while (filled < buffer.length) {
    const { bytesRead } = await handle.read(buffer, filled, buffer.length - filled, null);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  return buffer.subarray(0, filled);
}

export async function download(
  routes: ChunkRoutes,
  sessionId: string,
  remotePath: string,
  localPath: string,
): Promise<CopyResult> {
  const fs = await import("node:fs/promises");
  const path = await import("node:path");
  const result: CopyResult = { files: 0, bytes: 0, skipped: [] };
  const file = async (remote: string, local: string): Promise<void> => {
    const handle = await fs.open(local, "w");
    try {
      let offset = 0;
      for (;;) {
        const piece = await routes.readRange(sessionId, remote, offset, READ_CHUNK_BYTES);
        await handle.write(piece);
        offset += piece.length;
        if (piece.length < READ_CHUNK_BYTES) break;
      }
      result.files += 1;
      result.bytes += offset;
    } catch (err) {
      // No half-written file is left behind.
      await handle.close();
      await fs.rm(local, { force: true });
      throw err;
    }
    await handle.close();
  };
  const tree = async (remote: string, local: string, entries: DirEntry[], depth: number): Promise<void> => {
    if (depth >= MAX_COPY_DEPTH) throw new Error(`${remote}: deeper than ${MAX_COPY_DEPTH} directories`);
    await fs.mkdir(local, { recursive: true });
    for (const entry of entries) {
      const child = join(remote, entry.name);
      if (!safeName(entry.name)) result.skipped.push(child);
      else if (entry.type === "file") await file(child, path.join(local, entry.name));
      else if (entry.type === "dir") {
        await tree(child, path.join(local, entry.name), await routes.listFiles(sessionId, child), depth + 1);
      } else result.skipped.push(child);
    }
  };
  let entries: DirEntry[] | undefined;
  try {
    entries = await routes.listFiles(sessionId, remotePath);
  } catch (err) {
    if (!(err instanceof NotFound)) throw err;
  }
  if (entries !== undefined) {
    await tree(remotePath, localPath, entries, 0);
    return result;
  }
  const isDir = await fs.stat(localPath).then((s) => s.isDirectory(), () => false);
  const name = remotePath.replace(/\/+$/, "").split("/").pop() ?? remotePath;
  await file(remotePath, isDir ? path.join(localPath, name) : localPath);
  return result;
}
