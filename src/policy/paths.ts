/**
 * Canonical sandbox paths and gitignore-style path patterns. Pure string work: the policy
 * layer never touches the filesystem (symlinks are the kernel sandbox's problem).
 */
import { PalisadeError } from '../errors/index.js';

export const MAX_PATH_LENGTH = 4096;

/**
 * Resolve `path` against `cwd` (itself absolute), folding `.`, `..` and duplicate slashes.
 * `~` and `~/x` mean the sandbox HOME, which is the workspace. `..` above `/` stays at `/`.
 */
export function canonicalPath(path: string, cwd: string, home: string): string {
  if (path.includes('\0')) {
    throw new PalisadeError(
      'INVALID_PATH',
      'The path contains a NUL byte; paths must be plain text.',
    );
  }
  if (path.length > MAX_PATH_LENGTH) {
    throw new PalisadeError(
      'INVALID_PATH',
      `The path is longer than ${MAX_PATH_LENGTH} characters; use a shorter path.`,
    );
  }
  let full: string;
  if (path === '~' || path.startsWith('~/')) full = home + path.slice(1);
  else if (path.startsWith('/')) full = path;
  else full = `${cwd}/${path}`;
  const out: string[] = [];
  for (const segment of full.split('/')) {
    if (segment === '' || segment === '.') continue;
    if (segment === '..') out.pop();
    else out.push(segment);
  }
  return '/' + out.join('/');
}

/** Glob on one string: `*` any run, `?` one character. Iterative, O(n·m) worst case, no regex. */
export function globMatch(pattern: string, text: string): boolean {
  let p = 0;
  let t = 0;
  let starP = -1;
  let starT = 0;
  while (t < text.length) {
    const pc = pattern.charCodeAt(p);
    if (p < pattern.length && (pc === 63 /* ? */ || pc === text.charCodeAt(t))) {
      p++;
      t++;
    } else if (p < pattern.length && pc === 42 /* * */) {
      starP = p++;
      starT = t;
    } else if (starP >= 0) {
      p = starP + 1;
      t = ++starT;
    } else {
      return false;
    }
  }
  while (p < pattern.length && pattern.charCodeAt(p) === 42) p++;
  return p === pattern.length;
}

/** A compiled file pattern: absolute segments; `**` matches zero or more segments. */
export interface PathPattern {
  segments: string[];
}

/**
 * Compile a file-rule specifier (gitignore-style, relative to the workspace):
 * `//abs/**` absolute; `~/p` under HOME (= workspace); `/p`, `./p` and `p/q` under the
 * workspace; a pattern without any slash (`.env`, `*.pem`) matches at any depth under the
 * workspace. A trailing `/` is ignored: a pattern that matches a directory covers everything in it.
 */
export function compilePathPattern(spec: string, workspace: string): PathPattern {
  if (spec.includes('\0'))
    throw new PalisadeError('INVALID_POLICY', 'a path pattern contains a NUL byte');
  let body = spec;
  while (body.length > 1 && body.endsWith('/')) body = body.slice(0, -1);
  let absolute: string;
  if (body.startsWith('//')) absolute = body.slice(1);
  else if (body === '~' || body.startsWith('~/')) absolute = workspace + body.slice(1);
  else if (body.startsWith('/')) absolute = workspace + body;
  else if (body.startsWith('./')) absolute = `${workspace}/${body.slice(2)}`;
  else if (!body.includes('/')) absolute = `${workspace}/**/${body}`;
  else absolute = `${workspace}/${body}`;
  const segments: string[] = [];
  for (const segment of absolute.split('/')) {
    if (segment === '' || segment === '.') continue;
    if (segment === '..') segments.pop();
    else segments.push(segment);
  }
  return { segments };
}

function literalPrefix(segment: string): string {
  let end = 0;
  while (end < segment.length && !'*?['.includes(segment[end] as string)) end++;
  return segment.slice(0, end);
}

/**
 * A path segment that is itself a shell glob (`.e*`) stands for every name it could expand
 * to; treat it as matching when the literal prefixes agree. Deliberately over-approximate:
 * this is used for deny and ask rules only.
 */
function segmentMatches(ruleSegment: string, pathSegment: string, globPath: boolean): boolean {
  if (!globPath || literalPrefix(pathSegment) === pathSegment)
    return globMatch(ruleSegment, pathSegment);
  // A literal rule segment: could the shell glob expand to it? (`[…]` classes: assume yes.)
  if (literalPrefix(ruleSegment) === ruleSegment && !pathSegment.includes('['))
    return globMatch(pathSegment, ruleSegment);
  const a = literalPrefix(ruleSegment);
  const b = literalPrefix(pathSegment);
  const c = literalSuffix(ruleSegment);
  const d = literalSuffix(pathSegment);
  return (a.startsWith(b) || b.startsWith(a)) && (c.endsWith(d) || d.endsWith(c));
}

function literalSuffix(segment: string): string {
  let start = segment.length;
  while (start > 0 && !'*?[]'.includes(segment[start - 1] as string)) start--;
  return segment.slice(start);
}

function matchSegments(
  pattern: string[],
  path: string[],
  end: number,
  pi: number,
  si: number,
  memo: Set<number> | null,
  globPath: boolean,
): boolean {
  while (pi < pattern.length) {
    const seg = pattern[pi] as string;
    if (seg === '**') {
      // Memoise only here: without `**` the walk is linear.
      const seen = memo ?? new Set<number>();
      const key = pi * (end + 1) + si;
      if (seen.has(key)) return false;
      seen.add(key);
      for (let k = si; k <= end; k++) {
        if (matchSegments(pattern, path, end, pi + 1, k, seen, globPath)) return true;
      }
      return false;
    }
    if (si >= end || !segmentMatches(seg, path[si] as string, globPath)) return false;
    pi++;
    si++;
  }
  return si === end;
}

/**
 * Does the canonical path, or any directory above it, match the pattern? With `globPath`
 * the path's own glob characters are honoured (see segmentMatches).
 */
export function pathMatches(pattern: PathPattern, canonical: string, globPath = false): boolean {
  const parts = canonical === '/' ? [] : canonical.slice(1).split('/');
  const first = pattern.segments[0];
  // Fast reject: a literal first segment that differs rules out every ancestor too.
  if (
    first !== undefined &&
    first !== '**' &&
    !globPath &&
    literalPrefix(first) === first &&
    parts[0] !== first
  )
    return false;
  for (let end = parts.length; end >= 0; end--) {
    if (matchSegments(pattern.segments, parts, end, 0, 0, null, globPath)) return true;
  }
  return false;
}
