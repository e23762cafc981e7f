// Process inspection through /proc, shared by the tests that check who runs what (privilege
// separation, sandbox uids, what survives a crash). Linux only, like the rest of Palisade.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

export interface ProcessStatus {
  /** Real, effective, saved and filesystem uid. */
  uid: number[];
  /** Real, effective, saved and filesystem gid. */
  gid: number[];
  groups: number[];
  /** Effective capability set, as the hex string /proc prints. */
  capEff: string;
}

/** The raw value of one /proc/<pid>/status field (e.g. `Uid`, `CapPrm`); fails if absent. */
export function statusField(pid: number, field: string): string {
  const m = new RegExp(`^${field}:\\s*(.*)$`, 'm').exec(
    readFileSync(`/proc/${pid}/status`, 'utf8'),
  );
  assert.ok(m, `${field} of ${pid}`);
  return m[1]!.trim();
}

/** uid/gid/groups/CapEff of `pid`, from /proc/<pid>/status. */
export function statusOf(pid: number): ProcessStatus {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const nums = (key: string) =>
    (new RegExp(`^${key}:\\s*(.*)$`, 'm').exec(status)?.[1] ?? '')
      .trim()
      .split(/\s+/)
      .filter((x) => x.length > 0)
      .map(Number);
  return {
    uid: nums('Uid'),
    gid: nums('Gid'),
    groups: nums('Groups'),
    capEff: /^CapEff:\s*(\S+)/m.exec(status)?.[1] ?? '',
  };
}

function numericEntries(dir: string): string[] {
  return readdirSync(dir).filter((entry) => /^\d+$/.test(entry));
}

/** The pid of the process holding the TCP socket (IPv4 or IPv6) that listens on `port`. */
export function listenerPid(port: number): number | undefined {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const inodes = new Set<string>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(file, 'utf8').split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      // 0A is TCP_LISTEN; column 9 is the socket inode.
      if (cols[1]?.endsWith(`:${hexPort}`) && cols[3] === '0A' && cols[9]) inodes.add(cols[9]);
    }
  }
  for (const pid of numericEntries('/proc')) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m && inodes.has(m[1]!)) return Number(pid);
      } catch {
        // the fd closed meanwhile
      }
    }
  }
  return undefined;
}

/** Live (non-zombie) processes whose real uid is in [start, start + count). */
export function pidsInUidRange(start: number, count: number): number[] {
  const out: number[] = [];
  for (const pid of numericEntries('/proc')) {
    try {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      // A zombie has already died (e.g. SIGKILL'd with its crashed server) and only waits to be
      // reaped by init; it runs nothing and holds no resources but its pid.
      if (/^State:\s+Z/m.test(status)) continue;
      const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1] ?? -1);
      if (uid >= start && uid < start + count) out.push(Number(pid));
    } catch {
      // the process is gone
    }
  }
  return out;
}
