/** Output bounds: what a tool result may carry, and how a cut is reported to the model. */

export interface OutputLimits {
  /** Bytes of stdout and of stderr shown per exec result or poll. @default 64 KiB */
  maxStreamBytes: number;
  /** Bytes of a file shown per file_read. @default 64 KiB */
  maxReadBytes: number;
  /** Characters of a whole tool result text (listings, JSON views). @default 128 KiB */
  maxResultChars: number;
  /** Largest file_write content accepted (decoded bytes). @default 8 MiB */
  maxWriteBytes: number;
}

export const DEFAULT_OUTPUT_LIMITS: OutputLimits = {
  maxStreamBytes: 64 * 1024,
  maxReadBytes: 64 * 1024,
  maxResultChars: 128 * 1024,
  maxWriteBytes: 8 * 1024 * 1024,
};

/**
 * The first `max` bytes of `bytes` as UTF-8 text, cut on a character boundary, and whether
 * anything was cut.
 */
export function headText(bytes: Uint8Array, max: number): { text: string; cut: boolean } {
  if (bytes.length <= max) return { text: Buffer.from(bytes).toString('utf8'), cut: false };
  let end = max;
  // Step back over UTF-8 continuation bytes so no character is split.
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return { text: Buffer.from(bytes.subarray(0, end)).toString('utf8'), cut: true };
}

/** Renders one output stream with an explicit note when it was cut (here or by the server). */
export function renderStream(
  name: 'stdout' | 'stderr',
  bytes: Uint8Array,
  max: number,
  cutUpstream: boolean,
): string {
  const { text, cut } = headText(bytes, max);
  let out = `--- ${name} ---\n${text}`;
  if (text.length > 0 && !text.endsWith('\n')) out += '\n';
  if (cut || cutUpstream) {
    const total = cutUpstream ? `more than ${bytes.length}` : String(bytes.length);
    out += `[${name} truncated: showing the first ${Math.min(max, bytes.length)} of ${total} bytes; redirect the output to a file and page through it with file_read]\n`;
  }
  return out;
}

/** Caps a whole tool result text, saying so at the end. */
export function capText(text: string, max: number): string {
  if (text.length <= max) return text;
  return `${text.slice(0, max)}\n[result truncated: showing the first ${max} of ${text.length} characters; narrow the request]`;
}

/** True if `bytes` is text worth showing as such (valid UTF-8 without NUL bytes). */
export function looksLikeText(bytes: Uint8Array): boolean {
  if (bytes.includes(0)) return false;
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    return true;
  } catch {
    // A range may end inside a character: accept up to 3 trailing bytes of one.
    for (let back = 1; back <= 3 && back < bytes.length; back++) {
      try {
        new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(0, bytes.length - back));
        return true;
      } catch {
        continue;
      }
    }
    return false;
  }
}
