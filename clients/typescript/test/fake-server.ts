/**
 * A scripted HTTP server on loopback for the unit tests: each request is answered by the next
 * handler of a script, which writes the raw response (and may cut the connection).
 */
import net from "node:net";

export interface Seen {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: Buffer;
}

export type Handler = (request: Seen, socket: net.Socket) => void;

export class FakeServer {
  readonly seen: Seen[] = [];
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  port = 0;

  constructor(private readonly script: Handler[]) {}

  async start(): Promise<this> {
    this.server = net.createServer((socket) => {
      this.sockets.add(socket);
      socket.on("close", () => this.sockets.delete(socket));
      this.serve(socket);
    });
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server!.close(() => resolve()));
  }

  private serve(socket: net.Socket): void {
    let buffer = Buffer.alloc(0);
    socket.on("error", () => {});
    socket.on("data", (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        const end = buffer.indexOf("\r\n\r\n");
        if (end < 0) return;
        const lines = buffer.subarray(0, end).toString().split("\r\n");
        const [method, path] = lines[0]!.split(" ");
        const headers: Record<string, string> = {};
        for (const line of lines.slice(1)) {
          const colon = line.indexOf(":");
          headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
        }
        const length = Number(headers["content-length"] ?? 0);
        if (buffer.length < end + 4 + length) return;
        const body = buffer.subarray(end + 4, end + 4 + length);
        buffer = buffer.subarray(end + 4 + length);
        const request = { method: method!, path: path!, headers, body };
        this.seen.push(request);
        const handler = this.script.shift();
        if (!handler) {
          socket.end("HTTP/1.1 500 X\r\ncontent-length: 0\r\n\r\n");
          return;
        }
        handler(request, socket);
      }
    });
  }
}

export function jsonReply(status: number, body: unknown, extra = ""): Handler {
  const text = JSON.stringify(body);
  return (_request, socket) => {
    socket.write(
      `HTTP/1.1 ${status} X\r\ncontent-type: application/json\r\n${extra}content-length: ${Buffer.byteLength(text)}\r\n\r\n${text}`,
    );
  };
}

export function sseThenCut(frames: string): Handler {
  return (_request, socket) => {
    const bytes = Buffer.from(frames);
    socket.write(
      `HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n${bytes.length.toString(16)}\r\n`,
    );
    socket.write(bytes);
    socket.write("\r\n", () => socket.destroy());
  };
}

export function sseComplete(frames: string): Handler {
  return (_request, socket) => {
    socket.write(
      `HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: ${Buffer.byteLength(frames)}\r\n\r\n${frames}`,
    );
  };
}
