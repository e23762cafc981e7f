/**
 * The sandbox's filesystem view, expressed as bubblewrap arguments. Nothing of the host is
 * visible unless it is listed here: system directories read-only, a synthesised /etc without
 * secrets, fresh /proc, minimal /dev, private /tmp, the workspace, and allowlisted mounts.
 */
import { existsSync, lstatSync, mkdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Top-level system directories; merged-/usr hosts have them as symlinks into /usr. */
const SYSTEM_DIRS = ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32'];

/**
 * Host /etc entries that carry no secrets and that ordinary programs need (dynamic loader
 * cache, Debian alternatives, CA certificates, time zone, service names). Everything else in
 * /etc (shadow, ssh keys, sudoers, the host's passwd, machine-id, …) stays invisible.
 */
const HOST_ETC_ENTRIES = [
  'ld.so.cache',
  'ld.so.conf',
  'ld.so.conf.d',
  'alternatives',
  'ssl',
  'ca-certificates',
  'ca-certificates.conf',
  'localtime',
  'timezone',
  'protocols',
  'services',
  'mime.types',
  'os-release',
  'debian_version',
  'bash.bashrc',
  'profile',
  'inputrc',
  'terminfo',
  'magic',
  'gai.conf',
];

export const SANDBOX_UID = 1000;
export const SANDBOX_GID = 1000;
export const AGENT_PATH = '/.palisade/agent';
/** The file-operations helper (native/src/palisade-files.c), run inside the sandbox by the files API. */
export const FILES_HELPER_PATH = '/.palisade/files';
export const NET_DIR = '/.palisade/net';
export const WORKSPACE = '/workspace';

/** Writes the synthesised /etc files shared by every sandbox of an engine. */
export function writeSyntheticEtc(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const files: Record<string, string> = {
    passwd: `root:x:0:0:root:/nonexistent:/usr/sbin/nologin\nsandbox:x:${SANDBOX_UID}:${SANDBOX_GID}:Palisade sandbox:${WORKSPACE}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n`,
    group: `root:x:0:\nsandbox:x:${SANDBOX_GID}:\nnogroup:x:65534:\n`,
    hosts: '127.0.0.1\tlocalhost palisade\n::1\tlocalhost ip6-localhost ip6-loopback\n',
    hostname: 'palisade\n',
    'nsswitch.conf':
      'passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\nprotocols: files\nservices: files\n',
  };
  for (const [name, content] of Object.entries(files))
    writeFileSync(join(dir, name), content, { mode: 0o644 });
}

export interface LayoutInput {
  syntheticEtc: string;
  workspace: string;
  agentBinary: string;
  /** The files helper; the engine always mounts it (optional only for layout benchmarks). */
  filesBinary?: string;
  tmpBytes: number;
  mounts: Array<{ source: string; target: string; writable: boolean }>;
  bridgeSockets: Array<{ port: number; hostSocket: string }>;
}

export function filesystemArgs(input: LayoutInput): string[] {
  const args: string[] = ['--ro-bind', '/usr', '/usr'];
  for (const name of SYSTEM_DIRS) {
    const host = `/${name}`;
    let st;
    try {
      st = lstatSync(host);
    } catch {
      continue;
    }
    if (st.isSymbolicLink()) args.push('--symlink', readlinkSync(host), host);
    else if (st.isDirectory()) args.push('--ro-bind', host, host);
  }
  args.push('--tmpfs', '/etc');
  for (const name of ['passwd', 'group', 'hosts', 'hostname', 'nsswitch.conf']) {
    args.push('--ro-bind', join(input.syntheticEtc, name), `/etc/${name}`);
  }
  for (const name of HOST_ETC_ENTRIES) {
    const host = `/etc/${name}`;
    if (existsSync(host)) args.push('--ro-bind', host, host);
  }
  args.push('--remount-ro', '/etc');
  args.push('--proc', '/proc', '--dev', '/dev');
  args.push('--perms', '01777', '--size', String(input.tmpBytes), '--tmpfs', '/tmp');
  args.push('--bind', input.workspace, WORKSPACE);
  args.push('--ro-bind', input.agentBinary, AGENT_PATH);
  if (input.filesBinary) args.push('--ro-bind', input.filesBinary, FILES_HELPER_PATH);
  for (const b of input.bridgeSockets)
    args.push('--bind', b.hostSocket, `${NET_DIR}/${b.port}.sock`);
  for (const m of input.mounts) args.push(m.writable ? '--bind' : '--ro-bind', m.source, m.target);
  args.push('--remount-ro', '/');
  return args;
}

export function namespaceArgs(): string[] {
  return [
    '--unshare-user',
    '--unshare-pid',
    '--unshare-ipc',
    '--unshare-uts',
    '--unshare-cgroup',
    '--unshare-net',
    '--disable-userns',
    '--uid',
    String(SANDBOX_UID),
    '--gid',
    String(SANDBOX_GID),
    '--hostname',
    'palisade',
    '--cap-drop',
    'ALL',
    '--die-with-parent',
    '--as-pid-1',
    '--new-session',
    '--chdir',
    WORKSPACE,
  ];
}

/** Directories inside the sandbox that an extra mount may not cover. */
export const RESERVED_TARGETS = [
  '/',
  '/usr',
  '/bin',
  '/sbin',
  '/lib',
  '/lib32',
  '/lib64',
  '/libx32',
  '/etc',
  '/proc',
  '/dev',
  '/tmp',
  WORKSPACE,
  '/.palisade',
];
