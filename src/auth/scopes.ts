export const SCOPES = [
  'admin',
  'sandboxes:read',
  'sandboxes:write',
  'sandboxes:exec',
  'audit:read',
  'metrics:read',
  /** List, approve and deny pending human approvals (and read their feed). */
  'approvals:write',
] as const;
export type Scope = (typeof SCOPES)[number];

export function isScope(value: string): value is Scope {
  return (SCOPES as readonly string[]).includes(value);
}

/** `admin` implies every other scope. */
export function hasScope(granted: readonly Scope[], needed: Scope): boolean {
  return granted.includes('admin') || granted.includes(needed);
}

const TENANT_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
export function isValidTenant(value: string): boolean {
  return TENANT_RE.test(value);
}
