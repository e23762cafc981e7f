/**
 * Parsing of proxy requests: the request head of an HTTP proxy request (CONNECT or
 * absolute-form plain HTTP) and authority strings (`host:port`, `[v6]:port`). Strict on
 * purpose: anything ambiguous is refused rather than guessed, because the proxy and the
 * upstream must agree on where a request goes.
 */

export interface RequestHead {
  method: string;
  target: string;
  version: string;
  headers: Array<[name: string, value: string]>;
  /** Bytes of the head including the blank line. */
  length: number;
}

export type HeadResult =
  | { kind: 'incomplete' }
  | { kind: 'too-large' }
  | { kind: 'invalid'; reason: string }
  | { kind: 'head'; head: RequestHead };

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const HEAD_END = Buffer.from('\r\n\r\n');

export function parseRequestHead(buffer: Buffer, maxHeaderBytes: number): HeadResult {
  const end = buffer.indexOf(HEAD_END);
  if (end < 0)
    return buffer.length >= maxHeaderBytes ? { kind: 'too-large' } : { kind: 'incomplete' };
  const length = end + HEAD_END.length;
  if (length > maxHeaderBytes) return { kind: 'too-large' };
  const text = buffer.subarray(0, end).toString('latin1');
  const lines = text.split('\r\n');
  const requestLine = lines[0] ?? '';
  const parts = requestLine.split(' ');
  if (parts.length !== 3) return { kind: 'invalid', reason: 'malformed request line' };
  const [method, target, version] = parts as [string, string, string];
  if (!TOKEN.test(method)) return { kind: 'invalid', reason: 'malformed method' };
  if (version !== 'HTTP/1.1' && version !== 'HTTP/1.0') {
    return { kind: 'invalid', reason: 'unsupported HTTP version' };
  }
  if (target.length === 0 || /[\x00-\x20\x7f-\xff]/.test(target)) {
    return { kind: 'invalid', reason: 'malformed request target' };
  }
  const headers: Array<[string, string]> = [];
  for (const line of lines.slice(1)) {
    if (/[\r\n\x00]/.test(line)) return { kind: 'invalid', reason: 'malformed header line' };
    if (line.startsWith(' ') || line.startsWith('\t')) {
      return { kind: 'invalid', reason: 'obsolete header line folding is not accepted' };
    }
    const colon = line.indexOf(':');
    if (colon <= 0) return { kind: 'invalid', reason: 'malformed header line' };
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) return { kind: 'invalid', reason: 'malformed header name' };
    headers.push([name, line.slice(colon + 1).trim()]);
  }
  return { kind: 'head', head: { method, target, version, headers, length } };
}

export interface Authority {
  /** Host as written, without brackets for IPv6. */
  host: string;
  port: number;
}

/** `host:port` or `[v6]:port`; the port is required unless a default is given. */
export function parseAuthority(text: string, defaultPort?: number): Authority | null {
  let host: string;
  let portText: string | undefined;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close < 0) return null;
    host = text.slice(1, close);
    const rest = text.slice(close + 1);
    if (rest === '') portText = undefined;
    else if (rest.startsWith(':')) portText = rest.slice(1);
    else return null;
    if (!host.includes(':')) return null;
  } else {
    const colon = text.lastIndexOf(':');
    if (colon >= 0) {
      host = text.slice(0, colon);
      portText = text.slice(colon + 1);
      if (host.includes(':')) return null; // unbracketed IPv6 is ambiguous
    } else {
      host = text;
    }
  }
  if (host.length === 0 || /[\s@/\\?#%]/.test(host)) return null;
  let port: number;
  if (portText === undefined) {
    if (defaultPort === undefined) return null;
    port = defaultPort;
  } else {
    if (!/^[0-9]{1,5}$/.test(portText)) return null;
    port = Number(portText);
  }
  if (port < 1 || port > 65535) return null;
  return { host, port };
}

export interface AbsoluteTarget extends Authority {
  /** The origin-form path and query to send upstream. */
  path: string;
}

/** `http://host[:port]/path?query` as sent to a proxy. Other schemes are refused. */
export function parseAbsoluteHttpTarget(target: string): AbsoluteTarget | null {
  if (!/^http:\/\//i.test(target)) return null;
  const rest = target.slice('http://'.length);
  const slash = rest.search(/[/?#]/);
  const authorityText = slash < 0 ? rest : rest.slice(0, slash);
  let path = slash < 0 ? '/' : rest.slice(slash);
  if (path.includes('#')) return null;
  if (path.startsWith('?')) path = '/' + path;
  const authority = parseAuthority(authorityText, 80);
  if (authority === null) return null;
  return { ...authority, path };
}

export function headerValues(head: RequestHead, name: string): string[] {
  const lower = name.toLowerCase();
  return head.headers.filter(([n]) => n.toLowerCase() === lower).map(([, v]) => v);
}

/**
 * Finds where a request body ends in a byte stream, so the proxy forwards exactly one
 * request's body and nothing after it. `next` returns how many leading bytes of `chunk`
 * belong to the body (then `done` may be true), or null if the framing is malformed.
 */
export interface BodyFraming {
  readonly done: boolean;
  next(chunk: Uint8Array): number | null;
}

export function lengthFraming(length: number): BodyFraming {
  let remaining = length;
  return {
    get done() {
      return remaining === 0;
    },
    next(chunk) {
      const used = Math.min(remaining, chunk.length);
      remaining -= used;
      return used;
    },
  };
}

const MAX_CHUNK_LINE = 1024;
const CHUNK_SIZE_LINE = /^([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?$/;

/** `Transfer-Encoding: chunked` (RFC 9112 §7.1), strict: bare LF, bad sizes, oversized lines or trailers are malformed. */
export function chunkedFraming(maxTrailerBytes: number): BodyFraming {
  let state: 'size' | 'data' | 'data-cr' | 'data-lf' | 'trailer' | 'done' = 'size';
  let line = '';
  let remaining = 0;
  let trailerBytes = 0;
  return {
    get done() {
      return state === 'done';
    },
    next(chunk) {
      let i = 0;
      while (i < chunk.length && state !== 'done') {
        if (state === 'data') {
          const take = Math.min(remaining, chunk.length - i);
          i += take;
          remaining -= take;
          if (remaining === 0) state = 'data-cr';
          continue;
        }
        const byte = chunk[i++]!;
        if (state === 'data-cr') {
          if (byte !== 0x0d) return null;
          state = 'data-lf';
        } else if (state === 'data-lf') {
          if (byte !== 0x0a) return null;
          state = 'size';
        } else {
          // 'size' or 'trailer': collect a CRLF-terminated line.
          if (state === 'trailer' && ++trailerBytes > maxTrailerBytes) return null;
          if (byte === 0x0a) {
            if (!line.endsWith('\r')) return null;
            const text = line.slice(0, -1);
            line = '';
            if (state === 'trailer') {
              if (text === '') state = 'done';
              continue;
            }
            const match = CHUNK_SIZE_LINE.exec(text);
            if (match === null) return null;
            remaining = parseInt(match[1]!, 16);
            state = remaining === 0 ? 'trailer' : 'data';
          } else {
            if (line.length >= MAX_CHUNK_LINE) return null;
            if (line.endsWith('\r')) return null; // CR not followed by LF
            line += String.fromCharCode(byte);
          }
        }
      }
      return i;
    },
  };
}
