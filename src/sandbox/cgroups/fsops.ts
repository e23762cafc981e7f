import {
  existsSync,
  readFileSync,
  readdirSync,
  rmdirSync,
  writeFileSync,
  type Dirent,
} from 'node:fs';
import { join } from 'node:path';

/** Hard cap on how many groups one subtree walk visits; a delegatee cannot make us walk forever. */
export const MAX_WALK_GROUPS = 20_000;

export function errnoOf(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const code = (err as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

export function readText(path: string): string {
  return readFileSync(path, 'utf8');
}

/** The file's text, or undefined if it (or its group) does not exist. */
export function readIfExists(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ENODEV') return undefined;
    throw err;
  }
}

export function writeControl(path: string, value: string): void {
  writeFileSync(path, value);
}

/** Reads a "key value" per line file such as memory.stat or cgroup.events. */
export function readKeyed(path: string): Map<string, string> {
  const out = new Map<string, string>();
  const text = readIfExists(path);
  if (text === undefined) return out;
  for (const line of text.split('\n')) {
    const space = line.indexOf(' ');
    if (space > 0) out.set(line.slice(0, space), line.slice(space + 1).trim());
  }
  return out;
}

export function readNumber(path: string): number {
  const text = readText(path).trim();
  const value = Number(text);
  if (!Number.isFinite(value))
    throw new Error(`unexpected content in ${path}: ${text.slice(0, 40)}`);
  return value;
}

/** Pids listed in a cgroup.procs file; empty if the group is gone. */
export function readPids(procsFile: string): number[] {
  const text = readIfExists(procsFile);
  if (text === undefined) return [];
  const pids: number[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const pid = Number(line);
    if (Number.isInteger(pid) && pid > 0) pids.push(pid);
  }
  return pids;
}

function childDirs(dir: string): string[] {
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ENOTDIR') return [];
    throw err;
  }
  return entries.filter((e) => e.isDirectory()).map((e) => join(dir, e.name));
}

/**
 * Every group in the subtree rooted at `dir` (including `dir` if it exists), children before
 * their parents so the list can be rmdir'ed in order. Iterative and capped at MAX_WALK_GROUPS
 * because a delegatee controls the shape of the tree below its sandbox.
 */
export function subtreeChildrenFirst(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const preorder: string[] = [];
  const stack = [dir];
  while (stack.length > 0 && preorder.length < MAX_WALK_GROUPS) {
    const current = stack.pop() as string;
    preorder.push(current);
    for (const child of childDirs(current)) stack.push(child);
  }
  return preorder.reverse();
}

export type RmdirOutcome = 'removed' | 'gone' | 'busy';

export function rmdirTolerant(dir: string): RmdirOutcome {
  try {
    rmdirSync(dir);
    return 'removed';
  } catch (err) {
    const code = errnoOf(err);
    if (code === 'ENOENT') return 'gone';
    if (code === 'EBUSY' || code === 'ENOTEMPTY' || code === 'EAGAIN') return 'busy';
    throw err;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `condition` with a short backoff until it is true or `timeoutMs` passes. */
export async function waitFor(condition: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  let delay = 1;
  for (;;) {
    if (condition()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(delay);
    delay = Math.min(delay * 2, 20);
  }
}

/** SIGKILL a pid, ignoring processes that are already gone. */
export function sigkill(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch (err) {
    if (errnoOf(err) !== 'ESRCH') throw err;
  }
}
