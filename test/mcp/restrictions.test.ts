import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  MCP_TOOLS,
  READ_ONLY_TOOLS,
  TOOL_ACCESS,
  normaliseRestrictions,
  restrictionError,
  toolsAllowed,
} from '../../src/auth/index.js';
import { capText, checkValue, headText, TOOL_DEFINITIONS, toolsFor } from '../../src/mcp/index.js';

const SB = 'sb-aaaaaaaaaaaaaaaaaaaa';
const OTHER = 'sb-bbbbbbbbbbbbbbbbbbbb';

describe('key restrictions (pure)', () => {
  it('no restriction lets every route through', () => {
    assert.equal(restrictionError({}, 'GET', '/v1/keys', {}), undefined);
  });

  it('a sandbox key: other sandboxes are not found, non-sandbox routes forbidden, own routes open', () => {
    const r = { sandboxId: SB };
    assert.equal(
      restrictionError(r, 'POST', '/v1/sandboxes/:id/exec', { id: OTHER })?.code,
      'SANDBOX_NOT_FOUND',
    );
    assert.equal(restrictionError(r, 'POST', '/v1/sandboxes', {})?.code, 'FORBIDDEN');
    assert.equal(restrictionError(r, 'GET', '/v1/sandboxes', {})?.code, 'FORBIDDEN');
    assert.equal(restrictionError(r, 'GET', '/v1/audit', {})?.code, 'FORBIDDEN');
    assert.equal(restrictionError(r, 'POST', '/v1/kill', {})?.code, 'FORBIDDEN');
    assert.equal(restrictionError(r, 'POST', '/v1/sandboxes/:id/exec', { id: SB }), undefined);
    assert.equal(restrictionError(r, 'GET', '/v1/sandboxes/:id', { id: SB }), undefined);
    assert.equal(restrictionError(r, 'GET', '/v1/whoami', {}), undefined);
    assert.equal(restrictionError(r, 'POST', '/mcp', {}), undefined);
    // An unmatched route (no pattern) is refused, not waved through.
    assert.equal(restrictionError(r, 'GET', '', {})?.code, 'FORBIDDEN');
  });

  it('a tool key reaches exactly the routes its tools need', () => {
    const r = { tools: ['file_read' as const] };
    assert.equal(restrictionError(r, 'GET', '/v1/sandboxes/:id/files', { id: SB }), undefined);
    assert.equal(restrictionError(r, 'GET', '/v1/sandboxes/:id/files/stat', { id: SB }), undefined);
    assert.equal(
      restrictionError(r, 'PUT', '/v1/sandboxes/:id/files', { id: SB })?.code,
      'FORBIDDEN',
    );
    assert.equal(
      restrictionError(r, 'POST', '/v1/sandboxes/:id/exec', { id: SB })?.code,
      'FORBIDDEN',
    );
    assert.equal(
      restrictionError({ tools: [] }, 'GET', '/v1/sandboxes/:id', { id: SB })?.code,
      'FORBIDDEN',
    );
  });

  it('every tool maps to routes and a scope; read-only tools need only sandboxes:read', () => {
    for (const tool of MCP_TOOLS) assert.ok(TOOL_ACCESS[tool].routes.length > 0, tool);
    for (const tool of READ_ONLY_TOOLS)
      assert.equal(TOOL_ACCESS[tool].scope, 'sandboxes:read', tool);
    const readOnly = toolsAllowed({}, (s) => s === 'sandboxes:read');
    assert.deepEqual([...readOnly].sort(), [...READ_ONLY_TOOLS].sort());
  });

  it('normaliseRestrictions validates and refuses admin keys with restrictions', () => {
    assert.deepEqual(
      normaliseRestrictions({ tools: ['exec', 'file_read', 'exec'] }, ['sandboxes:exec']),
      {
        tools: ['exec', 'file_read'],
      },
    );
    assert.throws(() => normaliseRestrictions({ tools: ['nope'] }, []), /Invalid tools/);
    assert.throws(() => normaliseRestrictions({ tools: [] }, []), /Invalid tools/);
    assert.throws(() => normaliseRestrictions({ sandboxId: '../x' }, []), /Invalid sandboxId/);
    assert.throws(() => normaliseRestrictions({ sandboxId: SB }, ['admin']), /admin scope/);
    assert.deepEqual(normaliseRestrictions({}, ['admin']), {});
  });
});

describe('MCP tool schemas and output bounds (pure)', () => {
  it('every tool has a closed object schema and a definition for each tool name', () => {
    assert.deepEqual(TOOL_DEFINITIONS.map((t) => t.name).sort(), [...MCP_TOOLS].sort());
    for (const t of TOOL_DEFINITIONS)
      assert.equal(t.inputSchema.additionalProperties, false, t.name);
    const restricted = toolsFor(['exec'], SB);
    assert.deepEqual(restricted[0]?.inputSchema.required, ['command']);
  });

  it('checkValue refuses wrong types, unknown keys, bad patterns and oversize values', () => {
    const exec = TOOL_DEFINITIONS.find((t) => t.name === 'exec')!.inputSchema;
    assert.equal(checkValue(exec, { sandboxId: SB, command: 'ls' }), undefined);
    assert.match(checkValue(exec, { sandboxId: SB })!, /command is required/);
    assert.match(checkValue(exec, { sandboxId: 'sb-../../', command: 'x' })!, /wrong format/);
    assert.match(checkValue(exec, { sandboxId: SB, command: 1 })!, /must be a string/);
    assert.match(
      checkValue(exec, { sandboxId: SB, command: 'x', timeoutMs: 1.5 })!,
      /whole number/,
    );
    assert.match(
      checkValue(exec, { sandboxId: SB, command: 'x', env: { A: 1 } })!,
      /env\.A must be a string/,
    );
    assert.match(
      checkValue(exec, { sandboxId: SB, command: 'x'.repeat(256 * 1024 + 1) })!,
      /too long/,
    );
    assert.match(checkValue(exec, [])!, /must be an object/);
    assert.match(
      checkValue(exec, { sandboxId: SB, command: 'x', __proto__x: 1 })!,
      /not a known argument/,
    );
  });

  it('headText cuts on a character boundary and says so; capText reports the cut', () => {
    const bytes = Buffer.from('aé'); // a, then a 2-byte character
    assert.deepEqual(headText(bytes, 2), { text: 'a', cut: true });
    assert.deepEqual(headText(bytes, 3), { text: 'aé', cut: false });
    assert.match(
      capText('x'.repeat(20), 10),
      /\[result truncated: showing the first 10 of 20 characters/,
    );
  });
});
