export {
  AuditLog,
  MAX_AUDIT_FIELD_CHARS,
  type AuditEvent,
  type AuditRecord,
  type AuditFilter,
  type VerifyResult,
} from './log.js';
export { GENESIS_HASH, recordHash } from './chain.js';
