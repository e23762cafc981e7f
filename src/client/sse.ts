/**
 * A small text/event-stream parser (the WHATWG algorithm, minus reconnection: a command
 * stream is not resumable). Bounded: a line or event longer than `maxEventBytes` is a protocol
 * error instead of unbounded buffering.
 */
import { ProtocolError } from './errors.js';

export interface SseEvent {
  event: string;
  data: string;
}

export class SseParser {
  readonly #maxEventChars: number;
  readonly #decoder = new TextDecoder();
  #buffer = '';
  #event = '';
  #data: string[] = [];
  #dataChars = 0;
  #skipLeadingLf = false;

  constructor(maxEventBytes: number) {
    this.#maxEventChars = maxEventBytes;
  }

  /** Feeds bytes; returns the events they complete, in order. */
  push(bytes: Uint8Array): SseEvent[] {
    this.#buffer += this.#decoder.decode(bytes, { stream: true });
    return this.#drain();
  }

  /** End of stream: an unterminated event is discarded, as the standard says. */
  end(): SseEvent[] {
    this.#buffer += this.#decoder.decode();
    return this.#drain();
  }

  #drain(): SseEvent[] {
    const out: SseEvent[] = [];
    let start = 0;
    for (let i = 0; i < this.#buffer.length; i++) {
      const ch = this.#buffer.charCodeAt(i);
      if (ch === 10 && this.#skipLeadingLf && i === start) {
        // Second half of a CRLF split across pushes.
        this.#skipLeadingLf = false;
        start = i + 1;
        continue;
      }
      this.#skipLeadingLf = false;
      if (ch !== 10 && ch !== 13) continue;
      const line = this.#buffer.slice(start, i);
      if (ch === 13) {
        if (i + 1 < this.#buffer.length) {
          if (this.#buffer.charCodeAt(i + 1) === 10) i++;
        } else this.#skipLeadingLf = true;
      }
      start = i + 1;
      const event = this.#line(line);
      if (event) out.push(event);
    }
    this.#buffer = this.#buffer.slice(start);
    if (this.#buffer.length + this.#dataChars > this.#maxEventChars) {
      throw new ProtocolError(
        `An event in the server's stream exceeds ${this.#maxEventChars} characters; refusing to buffer more.`,
        undefined,
        'RESPONSE_TOO_LARGE',
      );
    }
    return out;
  }

  #line(line: string): SseEvent | undefined {
    if (line.length === 0) {
      if (this.#data.length === 0) {
        this.#event = '';
        return undefined;
      }
      const event = { event: this.#event || 'message', data: this.#data.join('\n') };
      this.#event = '';
      this.#data = [];
      this.#dataChars = 0;
      return event;
    }
    if (line.startsWith(':')) return undefined;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.#event = value;
    else if (field === 'data') {
      this.#data.push(value);
      this.#dataChars += value.length + 1;
      if (this.#dataChars > this.#maxEventChars) {
        throw new ProtocolError(
          `An event in the server's stream exceeds ${this.#maxEventChars} characters; refusing to buffer more.`,
          undefined,
          'RESPONSE_TOO_LARGE',
        );
      }
    }
    return undefined;
  }
}
