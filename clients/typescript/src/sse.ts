/** Incremental text/event-stream parser; an unfinished frame is discarded with its connection. */
export interface SseFrame {
  event: string;
  id: string | undefined;
  data: string;
}

export class SseParser {
  private buffer = new Uint8Array(0);
  private event = "";
  private id: string | undefined = undefined;
  private data: string[] = [];
  private readonly decoder = new TextDecoder();

  feed(chunk: Uint8Array): SseFrame[] {
    const joined = new Uint8Array(this.buffer.length + chunk.length);
    joined.set(this.buffer);
    joined.set(chunk, this.buffer.length);
    const frames: SseFrame[] = [];
    let start = 0;
    for (;;) {
      const newline = joined.indexOf(10, start);
      if (newline < 0) break;
      let end = newline;
      if (end > start && joined[end - 1] === 13) end -= 1;
      const line = this.decoder.decode(joined.subarray(start, end));
      start = newline + 1;
      if (line === "") {
        if (this.data.length > 0 || this.event !== "") {
          frames.push({ event: this.event || "message", id: this.id, data: this.data.join("\n") });
        }
        this.event = "";
        this.id = undefined;
        this.data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (name === "event") this.event = value;
      else if (name === "id") this.id = value;
      else if (name === "data") this.data.push(value);
    }
    this.buffer = joined.slice(start);
    return frames;
  }
}
