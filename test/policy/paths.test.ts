import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isPalisadeError } from '../../src/errors/index.js';
import {
  canonicalPath,
  compilePathPattern,
  globMatch,
  pathMatches,
} from '../../src/policy/paths.js';

describe('canonicalPath', () => {
  const c = (p: string, cwd = '/workspace') => canonicalPath(p, cwd, '/workspace');
  test('resolves . and .., folds slashes, never climbs above /', () => {
    assert.equal(c('a/./b//c/../d'), '/workspace/a/b/d');
    assert.equal(c('../../../../etc/passwd'), '/etc/passwd');
    assert.equal(c('//etc///passwd/'), '/etc/passwd');
    assert.equal(c('/'), '/');
    assert.equal(c('/..'), '/');
    assert.equal(c('x', '/tmp/dir'), '/tmp/dir/x');
  });
  test('~ is the workspace (the sandbox HOME); ~user is not expanded', () => {
    assert.equal(c('~'), '/workspace');
    assert.equal(c('~/.ssh/id_rsa'), '/workspace/.ssh/id_rsa');
    assert.equal(c('~root/x'), '/workspace/~root/x');
  });
  test('NUL and over-long paths are INVALID_PATH errors', () => {
    assert.throws(
      () => c('a\0b'),
      (e: unknown) => isPalisadeError(e, 'INVALID_PATH'),
    );
    assert.throws(
      () => c('a'.repeat(5000)),
      (e: unknown) => isPalisadeError(e, 'INVALID_PATH'),
    );
  });
});

describe('globMatch', () => {
  test('* and ? without regex', () => {
    assert.ok(globMatch('npm run *', 'npm run test'));
    assert.ok(globMatch('*', ''));
    assert.ok(globMatch('a?c', 'abc'));
    assert.ok(!globMatch('a?c', 'ac'));
    assert.ok(globMatch('*.ts', 'x.ts'));
    assert.ok(!globMatch('*.ts', 'x.tsx'));
  });
  test('pathological patterns stay fast', () => {
    const started = performance.now();
    assert.ok(!globMatch('*a*a*a*a*a*a*a*a*b', 'a'.repeat(5000)));
    assert.ok(performance.now() - started < 1000);
  });
});

describe('path patterns (gitignore-style, relative to the workspace)', () => {
  const m = (spec: string, path: string, glob = false) =>
    pathMatches(compilePathPattern(spec, '/workspace'), path, glob);
  test('anchors', () => {
    assert.ok(m('//etc/**', '/etc/passwd'));
    assert.ok(m('//etc', '/etc/passwd'), 'a matching directory covers its contents');
    assert.ok(!m('//etc/**', '/etcetera'));
    assert.ok(m('/src/**', '/workspace/src/a.ts'), '/p is workspace-relative');
    assert.ok(m('./src/**', '/workspace/src/a/b.ts'));
    assert.ok(m('src/*.ts', '/workspace/src/a.ts'));
    assert.ok(!m('src/*.ts', '/workspace/src/a/b.ts'));
    assert.ok(m('~/.ssh/**', '/workspace/.ssh/id_rsa'));
  });
  test('a pattern without a slash matches at any depth under the workspace', () => {
    assert.ok(m('.env', '/workspace/.env'));
    assert.ok(m('.env', '/workspace/a/b/.env'));
    assert.ok(!m('.env', '/etc/.env'));
    assert.ok(m('*.pem', '/workspace/certs/key.pem'));
  });
  test('** matches zero or more segments', () => {
    assert.ok(m('//a/**/z', '/a/z'));
    assert.ok(m('//a/**/z', '/a/b/c/z'));
    assert.ok(!m('//a/**/z', '/b/z'));
  });
  test('shell-glob paths match when any expansion could', () => {
    assert.ok(m('.env', '/workspace/.e*', true));
    assert.ok(m('//secrets/**', '/secr*/key', true));
    assert.ok(!m('.env', '/workspace/*.ts', true));
    assert.ok(!m('//secrets/**', '/tmp/*', true));
  });
});
