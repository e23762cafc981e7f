export type StreamName = 'stdout' | 'stderr';

export interface LogChunk {
  seq: number;
  stream: StreamName;
  data: Buffer;
}

export interface LogRead {
  chunks: LogChunk[];
  /** Pass as `cursor` next time. */
  nextCursor: number;
  /** True if chunks before the returned ones were dropped to keep the log bounded. */
  dropped: boolean;
}

/**
 * Output of one background exec, bounded in bytes: when full, the oldest chunks are dropped.
 * A cursor is the sequence number of the next chunk the reader wants, so a reader that fell
 * behind learns that it missed output instead of silently getting a gap.
 */
export class ChunkLog {
  readonly #chunks: LogChunk[] = [];
  readonly #maxBytes: number;
  #bytes = 0;
  #nextSeq = 0;
  #droppedBytes = 0;

  constructor(maxBytes: number) {
    this.#maxBytes = Math.max(1, maxBytes);
  }

  get bytes(): number {
    return this.#bytes;
  }

  get droppedBytes(): number {
    return this.#droppedBytes;
  }

  push(stream: StreamName, data: Buffer): void {
    if (data.length === 0) return;
    let chunk = data;
    if (chunk.length > this.#maxBytes) {
      this.#droppedBytes += chunk.length - this.#maxBytes;
      chunk = chunk.subarray(chunk.length - this.#maxBytes);
    }
    this.#chunks.push({ seq: this.#nextSeq++, stream, data: Buffer.from(chunk) });
    this.#bytes += chunk.length;
    while (this.#bytes > this.#maxBytes) {
      const oldest = this.#chunks.shift();
      if (!oldest) break;
      this.#bytes -= oldest.data.length;
      this.#droppedBytes += oldest.data.length;
    }
  }

  read(cursor: number, maxBytes: number): LogRead {
    const firstSeq = this.#chunks[0]?.seq ?? this.#nextSeq;
    const dropped = cursor < firstSeq && this.#droppedBytes > 0;
    const out: LogChunk[] = [];
    let size = 0;
    let next = Math.max(cursor, firstSeq);
    for (const chunk of this.#chunks) {
      if (chunk.seq < next) continue;
      if (out.length > 0 && size + chunk.data.length > maxBytes) break;
      out.push(chunk);
      size += chunk.data.length;
      next = chunk.seq + 1;
    }
    return { chunks: out, nextCursor: next, dropped };
  }
}
