import { createHash } from 'node:crypto';

/** prev_hash of the first record. */
export const GENESIS_HASH = '0'.repeat(64);

export interface ChainFields {
  seq: number;
  ts: string;
  type: string;
  tenant: string | null;
  sandboxId: string | null;
  actor: string | null;
  /** The record's data exactly as stored (JSON text). */
  data: string;
  prevHash: string;
}

/**
 * The record hash covers every stored field including its position (seq) and its
 * predecessor's hash, so editing, deleting, inserting or reordering records breaks the chain
 * at the first affected record. A JSON array gives an unambiguous encoding of the fields.
 */
export function recordHash(fields: ChainFields): string {
  const canonical = JSON.stringify([
    fields.seq,
    fields.ts,
    fields.type,
    fields.tenant,
    fields.sandboxId,
    fields.actor,
    fields.data,
    fields.prevHash,
  ]);
  return createHash('sha256').update(canonical).digest('hex');
}
