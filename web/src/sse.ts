// A streaming parser for `text/event-stream` (WHATWG HTML, "Server-sent events",
// §9.2.6 "Interpreting an event stream"). The client reads the stream with fetch()
// rather than EventSource because EventSource cannot send an Authorization header,
// and the token must not travel in the URL.

export interface SseEvent {
  /** The `event:` field, "message" when absent. */
  type: string;
  /** The `data:` lines joined with "\n". */
  data: string;
  /** The last `id:` seen so far in the stream (it carries over to later events). */
  lastEventId: string;
}

export class SseParser {
  private buffer = "";
  private started = false;
  private data: string[] = [];
  private type = "";
  private lastId = "";

  constructor(
    private readonly onEvent: (event: SseEvent) => void,
    /** Called for every comment line (keep-alives), so a reader can tell the stream lives. */
    private readonly onComment: (text: string) => void = () => {},
  ) {}

  /** The last event id of the stream, as a reconnect's `Last-Event-ID` should send it. */
  get lastEventId(): string {
    return this.lastId;
  }

  /** Feeds decoded text; complete lines are interpreted, a partial line waits for more. */
  push(text: string): void {
    if (!this.started) {
      if (text.length === 0) return;
      this.started = true;
      // A single leading U+FEFF is ignored (§9.2.6).
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    this.buffer += text;
    let start = 0;
    for (;;) {
      const cr = this.buffer.indexOf("\r", start);
      const lf = this.buffer.indexOf("\n", start);
      if (cr < 0 && lf < 0) break;
      let end: number;
      let next: number;
      if (cr >= 0 && (lf < 0 || cr < lf)) {
        // A CR at the very end may be the first half of a CRLF split across chunks.
        if (cr === this.buffer.length - 1) break;
        end = cr;
        next = this.buffer.charCodeAt(cr + 1) === 10 ? cr + 2 : cr + 1;
      } else {
        end = lf;
        next = lf + 1;
      }
      this.line(this.buffer.slice(start, end));
      start = next;
    }
    this.buffer = this.buffer.slice(start);
  }

  /** Ends the stream: an event whose blank line never came is discarded (§9.2.6). */
  end(): void {
    if (this.buffer.endsWith("\r")) {
      this.line(this.buffer.slice(0, -1));
    }
    this.buffer = "";
    this.data = [];
    this.type = "";
  }

  private line(line: string): void {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.charCodeAt(0) === 58 /* ':' */) {
      this.onComment(line.slice(1).trimStart());
      return;
    }
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32 /* ' ' */) value = value.slice(1);
    }
    switch (field) {
      case "event":
        this.type = value;
        break;
      case "data":
        this.data.push(value);
        break;
      case "id":
        if (!value.includes("\0")) this.lastId = value;
        break;
      // `retry` and unknown fields are ignored: the client has its own backoff.
    }
  }

  private dispatch(): void {
    if (this.data.length === 0) {
      this.type = "";
      return;
    }
    const event: SseEvent = {
      type: this.type || "message",
      data: this.data.join("\n"),
      lastEventId: this.lastId,
    };
    this.data = [];
    this.type = "";
    this.onEvent(event);
  }
}
