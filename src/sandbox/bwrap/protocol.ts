/**
 * The framed protocol between the engine and the in-sandbox agent
 * (native/src/palisade-sandbox.c). Frame: u32 LE length of the rest, u8 type, u32 LE exec id, body.
 */
import type { Readable, Writable } from 'node:stream';

export const FrameType = {
  Exec: 1,
  Stdin: 2,
  StdinClose: 3,
  Signal: 4,
  Ready: 0x81,
  Started: 0x82,
  StartFailed: 0x83,
  Stdout: 0x84,
  Stderr: 0x85,
  Exit: 0x86,
  StdinAck: 0x87,
  Log: 0x88,
} as const;

/** Must match MAX_FRAME in the agent. */
export const MAX_REQUEST_FRAME = 1 << 20;
/** Agent frames carry at most 64 KiB of output; anything far larger means a broken agent. */
const MAX_AGENT_FRAME = 1 << 17;

export function encodeFrame(type: number, id: number, body?: Uint8Array): Buffer {
  const len = body?.length ?? 0;
  const frame = Buffer.allocUnsafe(9 + len);
  frame.writeUInt32LE(5 + len, 0);
  frame.writeUInt8(type, 4);
  frame.writeUInt32LE(id, 5);
  if (body) frame.set(body, 9);
  return frame;
}

/** T_EXEC body: u32 argc, u32 envc, NUL-terminated cwd, argv..., env... */
export function encodeExec(id: number, cwd: string, argv: string[], env: string[]): Buffer {
  const parts = [cwd, ...argv, ...env].map((s) => Buffer.from(s + '\0'));
  const head = Buffer.allocUnsafe(8);
  head.writeUInt32LE(argv.length, 0);
  head.writeUInt32LE(env.length, 4);
  return encodeFrame(FrameType.Exec, id, Buffer.concat([head, ...parts]));
}

export interface AgentFrame {
  type: number;
  id: number;
  body: Buffer;
}

/** Incremental decoder for the agent's stdout; calls onFrame for each complete frame. */
export class FrameDecoder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(
    private readonly onFrame: (frame: AgentFrame) => void,
    private readonly onError: (message: string) => void,
  ) {}

  push(chunk: Buffer): void {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    let buf =
      this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    let off = 0;
    while (buf.length - off >= 4) {
      const len = buf.readUInt32LE(off);
      if (len < 5 || len > MAX_AGENT_FRAME) {
        this.onError(`agent sent a frame of invalid length ${len}`);
        this.pending = [];
        this.pendingBytes = 0;
        return;
      }
      if (buf.length - off < 4 + len) break;
      const type = buf.readUInt8(off + 4);
      const id = buf.readUInt32LE(off + 5);
      // Copy the body: chunks are reused by the stream.
      const body = Buffer.from(buf.subarray(off + 9, off + 4 + len));
      off += 4 + len;
      this.onFrame({ type, id, body });
    }
    buf = buf.subarray(off);
    this.pending = buf.length ? [buf] : [];
    this.pendingBytes = buf.length;
  }
}

export function attachDecoder(
  stream: Readable,
  onFrame: (f: AgentFrame) => void,
  onError: (m: string) => void,
): void {
  const decoder = new FrameDecoder(onFrame, onError);
  stream.on('data', (chunk: Buffer) => decoder.push(chunk));
}

export function writeFrame(stream: Writable, frame: Buffer): void {
  stream.write(frame);
}
