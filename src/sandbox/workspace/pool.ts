import { constants as fsConstants } from 'node:fs';
import {
  chmod,
  chown,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  rm,
  rmdir,
  statfs,
  unlink,
} from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { PalisadeError } from '../../errors/index.js';
import {
  checkEncryptionSupport,
  defaultFscryptHelper,
  encryptDirectory,
  encryptionMissing,
  readEncryptionStatus,
  removeDirectoryKey,
} from './encryption.js';
import { readMounts, type MountEntry } from './mounts.js';
import { firstLine, runCommand } from './run.js';

export interface WorkspacePoolOptions {
  /** Engine data directory; the pool lives in `<dataDir>/workspaces`. Must be absolute. */
  dataDir: string;
  /**
   * Disk budget of the whole pool: the sum of the quotas of all live workspaces may not exceed
   * it. Each workspace is a sparse image, so this costs nothing until used.
   * @default 64 GiB (and never more than the host disk can actually hold; see create())
   */
  sizeBytes?: number;
  /** Path to palisade-quota (used only by applyDirectoryQuota; accepted here for symmetry). */
  quotaHelper?: string;
  /**
   * fscrypt (v2, AES-256-XTS/CTS) encryption of every workspace with its own random key that
   * lives only in the kernel while the workspace is mounted. 'required' fails closed when the
   * kernel or filesystem cannot do it. @default 'required'
   */
  encryption?: WorkspaceEncryption;
  /** Path to palisade-fscrypt. @default <repo>/native/build/palisade-fscrypt */
  fscryptHelper?: string;
}

export type WorkspaceEncryption = 'required' | 'off';

export interface WorkspaceOwner {
  uid: number;
  gid: number;
}

export interface WorkspaceQuota {
  /** Hard limit on the workspace's size in bytes (rounded down to 4 KiB). */
  bytes: number;
  /** Maximum number of files and directories. @default max(1024, bytes / 16 KiB) */
  inodes?: number;
}

export interface WorkspaceUsage {
  usedBytes: number;
  limitBytes: number;
}

export interface WorkspacePool {
  /** Directory under which every workspace image is mounted (`<mountPoint>/<sandboxId>`). */
  readonly mountPoint: string;
  /** Whether workspaces are encrypted (fscrypt, one key per workspace). */
  readonly encryption: WorkspaceEncryption;
  /**
   * Creates and mounts a workspace; returns its host path, `<mountPoint>/<sandboxId>/workspace`
   * (owned by owner, mode 0700, encrypted unless encryption is 'off').
   */
  create(sandboxId: string, owner: WorkspaceOwner, quota: WorkspaceQuota): Promise<string>;
  usage(owner: { uid: number }): Promise<WorkspaceUsage>;
  /** Unmounts the workspace and deletes its image. Removing an unknown id is a no-op. */
  remove(sandboxId: string, owner: { uid: number }): Promise<void>;
  /** Removes every workspace whose id is not in `keep`; returns the removed ids. */
  reapLeftovers(keep: ReadonlySet<string>): Promise<string[]>;
  /** Unmounts every workspace (images stay; a later open remounts them). */
  close(): Promise<void>;
}

const KIB = 1024;
const MIB = 1024 * KIB;
const GIB = 1024 * MIB;
const BLOCK_SIZE = 4096;
export const DEFAULT_POOL_BYTES = 64 * GIB;
export const MIN_WORKSPACE_BYTES = 16 * MIB;
export const MAX_WORKSPACE_BYTES = 16 * 1024 * GIB;
const MAX_POOL_BYTES = 1024 * 1024 * GIB;
const BYTES_PER_DEFAULT_INODE = 16 * KIB;
const MIN_INODES = 1024;
/** ext4 cannot have more than one inode per 1 KiB; keep a margin for its own metadata. */
const MIN_BYTES_PER_INODE = 2 * KIB;
/** Host disk kept free no matter what: 5% of the host filesystem, at most 2 GiB. */
const HOST_RESERVE_FRACTION = 0.05;
const HOST_RESERVE_MAX_BYTES = 2 * GIB;
const PROBE_BYTES = 16 * MIB;
const WORKSPACE_ID = /^[a-z0-9-]{1,64}$/;
const IMAGE_SUFFIX = '.img';
const MOUNT_OPTIONS = 'loop,nodev,nosuid,noatime,errors=remount-ro,noinit_itable';
/**
 * The sandbox's /workspace is this directory inside the image, not the filesystem root: fscrypt
 * cannot encrypt a root directory, and lost+found stays out of the sandbox's view.
 */
export const WORKSPACE_SUBDIR = 'workspace';

export function defaultInodes(bytes: number): number {
  return Math.max(MIN_INODES, Math.floor(bytes / BYTES_PER_DEFAULT_INODE));
}

export function validateWorkspaceId(sandboxId: unknown): string {
  if (typeof sandboxId !== 'string' || !WORKSPACE_ID.test(sandboxId)) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'workspace id must be 1-64 characters of lowercase letters, digits and "-"',
      { field: 'sandboxId' },
    );
  }
  return sandboxId;
}

function validateUid(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0 || value >= 0xffff_ffff) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `${field} must be an unprivileged id (an integer in 1..4294967294)`,
      {
        field,
      },
    );
  }
  return value;
}

function validateQuota(quota: WorkspaceQuota): { bytes: number; inodes: number } {
  const bytes = quota?.bytes;
  if (
    typeof bytes !== 'number' ||
    !Number.isSafeInteger(bytes) ||
    bytes < MIN_WORKSPACE_BYTES ||
    bytes > MAX_WORKSPACE_BYTES
  ) {
    throw new PalisadeError(
      'INVALID_LIMIT',
      `workspace disk quota must be an integer number of bytes between ${MIN_WORKSPACE_BYTES} (16 MiB) and ${MAX_WORKSPACE_BYTES} (16 TiB)`,
      { field: 'diskBytes' },
    );
  }
  const roundedBytes = Math.floor(bytes / BLOCK_SIZE) * BLOCK_SIZE;
  const inodes = quota.inodes ?? defaultInodes(roundedBytes);
  const maxInodes = Math.min(0xffff_ffff, Math.floor(roundedBytes / MIN_BYTES_PER_INODE));
  if (
    typeof inodes !== 'number' ||
    !Number.isSafeInteger(inodes) ||
    inodes < 16 ||
    inodes > maxInodes
  ) {
    throw new PalisadeError(
      'INVALID_LIMIT',
      `workspace inode limit must be an integer between 16 and ${maxInodes} (one per 2 KiB of quota)`,
      { field: 'inodes' },
    );
  }
  return { bytes: roundedBytes, inodes };
}

function requirementMissing(what: string, fix: string, cause?: unknown): PalisadeError {
  return new PalisadeError(
    'REQUIREMENT_MISSING',
    `workspace disk quota unavailable: ${what}. Fix: ${fix}`,
    { requirement: 'workspace-quota' },
    { cause },
  );
}

/**
 * Each workspace is its own ext4 filesystem in a sparse image file, loop-mounted. Its size is
 * the quota: the kernel refuses writes past it (ENOSPC) and the image can never grow past it
 * on the host disk. Admission control keeps the sum of all quotas within the pool budget and
 * within the host's free space, so filling every workspace at once still cannot fill the host.
 */
class LoopImagePool implements WorkspacePool {
  readonly mountPoint: string;
  readonly encryption: WorkspaceEncryption;
  private readonly imageDir: string;
  private readonly dataDir: string;
  private readonly budgetBytes: number;
  /** Mutations run one at a time so admission control sees a consistent picture. */
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private readonly inFlight = new Set<Promise<string>>();
  private readonly creatingOwners = new Set<number>();
  private readonly keys: WorkspaceKeys;

  constructor(root: string, dataDir: string, budgetBytes: number, keys: WorkspaceKeys) {
    this.keys = keys;
    this.encryption = keys.encrypt ? 'required' : 'off';
    this.dataDir = dataDir;
    this.mountPoint = join(root, 'mnt');
    this.imageDir = join(root, 'images');
    this.budgetBytes = budgetBytes;
  }

  /** Waits for creates that are formatting or mounting outside the queue. */
  private async settleCreates(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
  }

  private serialized<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(() => {
      if (this.closed) throw new PalisadeError('CONFLICT', 'the workspace pool is closed');
      return task();
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private workspacePath(id: string): string {
    const path = join(this.mountPoint, validateWorkspaceId(id));
    // The id regex already forbids "/" and "..", this is the second lock on the same door.
    if (resolve(path) !== path || !path.startsWith(this.mountPoint + '/')) {
      throw new PalisadeError('INVALID_PATH', 'workspace path escapes the pool');
    }
    return path;
  }

  private imagePath(id: string): string {
    return join(this.imageDir, validateWorkspaceId(id) + IMAGE_SUFFIX);
  }

  async create(sandboxId: string, owner: WorkspaceOwner, quota: WorkspaceQuota): Promise<string> {
    const id = validateWorkspaceId(sandboxId);
    const uid = validateUid(owner?.uid, 'uid');
    const gid = validateUid(owner?.gid, 'gid');
    const limits = validateQuota(quota);
    // Admission (budget, duplicate ids and owners, reserving the image file) is serialized so
    // concurrent creates see each other; formatting and mounting, the slow part, run in
    // parallel. Operations that walk all mounts (remove, reap, close) wait for creates in flight.
    const { path, image } = await this.serialized(async () => {
      const path = this.workspacePath(id);
      const image = this.imagePath(id);
      if ((await exists(image)) || (await exists(path))) {
        throw new PalisadeError('CONFLICT', `a workspace for ${id} already exists`);
      }
      if (this.creatingOwners.has(uid)) {
        throw new PalisadeError('CONFLICT', `uid ${uid} already owns a workspace`);
      }
      await this.admit(limits.bytes);
      await this.ensureNoOwnerClash(uid);
      await reserveImage(image, limits.bytes);
      this.creatingOwners.add(uid);
      return { path, image };
    });
    const creation = (async () => {
      try {
        await formatImage(image, limits.inodes, this.keys.encrypt);
        await mkdir(path, { mode: 0o700 });
        await mountImage(image, path);
        return await prepareWorkspaceDirectory(path, uid, gid, this.keys);
      } catch (err) {
        await this.removeUnchecked(id).catch(() => undefined);
        throw err;
      } finally {
        this.creatingOwners.delete(uid);
      }
    })();
    this.inFlight.add(creation);
    try {
      return await creation;
    } finally {
      this.inFlight.delete(creation);
    }
  }

  /** Two workspaces with one uid would make usage() ambiguous and share a quota identity. */
  private async ensureNoOwnerClash(uid: number): Promise<void> {
    for (const mount of await this.workspaceMounts()) {
      const st = await lstat(join(mount.mountPoint, WORKSPACE_SUBDIR)).catch(() => undefined);
      if (st?.uid === uid) {
        throw new PalisadeError('CONFLICT', `uid ${uid} already owns a workspace`);
      }
    }
  }

  private async admit(bytes: number): Promise<void> {
    let committed = 0;
    let allocated = 0;
    for (const name of await readdir(this.imageDir)) {
      if (!name.endsWith(IMAGE_SUFFIX)) continue;
      const st = await lstat(join(this.imageDir, name)).catch(() => undefined);
      if (!st?.isFile()) continue;
      committed += st.size;
      allocated += Math.min(st.size, st.blocks * 512);
    }
    if (committed + bytes > this.budgetBytes) {
      throw new PalisadeError(
        'SANDBOX_LIMIT_REACHED',
        `workspace pool budget exhausted: ${formatBytes(committed)} of ${formatBytes(this.budgetBytes)} already promised, ` +
          `${formatBytes(bytes)} more requested. Destroy sandboxes, request a smaller disk quota, or raise the pool size`,
        { committedBytes: committed, budgetBytes: this.budgetBytes, requestedBytes: bytes },
      );
    }
    const host = await statfs(this.dataDir);
    const free = host.bavail * host.bsize;
    const reserve = Math.min(
      HOST_RESERVE_MAX_BYTES,
      Math.floor(host.blocks * host.bsize * HOST_RESERVE_FRACTION),
    );
    const stillGrowable = committed - allocated;
    if (stillGrowable + bytes > free - reserve) {
      throw new PalisadeError(
        'SANDBOX_LIMIT_REACHED',
        `host disk too full for another ${formatBytes(bytes)} workspace: ${formatBytes(free)} free, ` +
          `${formatBytes(stillGrowable)} already promised to workspaces, ${formatBytes(reserve)} kept for the host. ` +
          'Free disk space, destroy sandboxes or request a smaller disk quota',
        { requestedBytes: bytes },
      );
    }
  }

  async usage(owner: { uid: number }): Promise<WorkspaceUsage> {
    const uid = validateUid(owner?.uid, 'uid');
    if (this.closed) throw new PalisadeError('CONFLICT', 'the workspace pool is closed');
    for (const mount of await this.workspaceMounts()) {
      const st = await lstat(join(mount.mountPoint, WORKSPACE_SUBDIR)).catch(() => undefined);
      if (st?.uid !== uid) continue;
      const fs = await statfs(mount.mountPoint);
      // ext4 keeps a small slice (bfree - bavail: 2% or 4096 blocks, whichever is smaller) for
      // its own metadata that no file can use; it is not part of the usable limit.
      const reserved = fs.bfree - fs.bavail;
      return {
        usedBytes: (fs.blocks - fs.bfree) * fs.bsize,
        limitBytes: (fs.blocks - reserved) * fs.bsize,
      };
    }
    throw new PalisadeError('SANDBOX_NOT_FOUND', `no workspace is owned by uid ${uid}`);
  }

  async remove(sandboxId: string, owner: { uid: number }): Promise<void> {
    const id = validateWorkspaceId(sandboxId);
    const uid = validateUid(owner?.uid, 'uid');
    return this.serialized(async () => {
      const path = this.workspacePath(id);
      if ((await this.mountsAt(path)).length > 0) {
        // A workspace made before the `workspace` subdirectory existed is owned at its root.
        const st = await lstat(join(path, WORKSPACE_SUBDIR)).catch(() => lstat(path));
        if (st.uid !== uid) {
          throw new PalisadeError(
            'CONFLICT',
            `workspace ${id} is not owned by uid ${uid}; not removing it`,
          );
        }
      }
      await this.removeUnchecked(id);
    });
  }

  async reapLeftovers(keep: ReadonlySet<string>): Promise<string[]> {
    return this.serialized(async () => {
      await this.settleCreates();
      const ids = new Set<string>();
      for (const name of await readdir(this.imageDir)) {
        const id = name.endsWith(IMAGE_SUFFIX) ? name.slice(0, -IMAGE_SUFFIX.length) : '';
        if (WORKSPACE_ID.test(id)) ids.add(id);
      }
      for (const name of await readdir(this.mountPoint)) if (WORKSPACE_ID.test(name)) ids.add(name);
      for (const mount of await this.workspaceMounts()) {
        const name = mount.mountPoint.slice(this.mountPoint.length + 1);
        if (WORKSPACE_ID.test(name)) ids.add(name);
      }
      const removed: string[] = [];
      for (const id of [...ids].sort()) {
        if (keep.has(id)) continue;
        await this.removeUnchecked(id, true);
        removed.push(id);
      }
      return removed;
    });
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return this.serialized(async () => {
      await this.settleCreates();
      for (const mount of await this.workspaceMounts()) await unmountAll(mount.mountPoint);
      this.closed = true;
    });
  }

  /** Remounts images left by a crash or reboot so every image has its mount. */
  async recover(): Promise<void> {
    for (const name of await readdir(this.imageDir)) {
      const id = name.endsWith(IMAGE_SUFFIX) ? name.slice(0, -IMAGE_SUFFIX.length) : '';
      if (!WORKSPACE_ID.test(id)) continue;
      const path = this.workspacePath(id);
      if ((await this.mountsAt(path)).length > 0) continue;
      await mkdir(path, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
      });
      // An image that no longer mounts (e.g. damaged) stays unmounted; reapLeftovers removes it.
      await mountImage(join(this.imageDir, name), path).catch(() => undefined);
    }
  }

  /**
   * `dropKey`: remove the fscrypt key before unmounting. Always done for leftovers (they may come
   * from a run with encryption on); for ordinary removes only when this pool encrypts.
   */
  private async removeUnchecked(id: string, dropKey = this.keys.encrypt): Promise<void> {
    const path = this.workspacePath(id);
    if (dropKey && (await this.mountsAt(path)).length > 0)
      await forgetWorkspaceKey(path, this.keys);
    await unmountAll(path);
    // Not mounted any more, so this only removes the empty mount point (never the workspace
    // contents, which die with the image). fs.rm does not follow symlinks.
    await rm(path, { recursive: true, force: true });
    await unlink(this.imagePath(id)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  private async workspaceMounts(): Promise<MountEntry[]> {
    const prefix = this.mountPoint + '/';
    return (await readMounts()).filter(
      (m) => m.mountPoint.startsWith(prefix) && !m.mountPoint.slice(prefix.length).includes('/'),
    );
  }

  private async mountsAt(path: string): Promise<MountEntry[]> {
    return (await readMounts()).filter((m) => m.mountPoint === path);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

function formatBytes(bytes: number): string {
  if (bytes >= GIB) return `${(bytes / GIB).toFixed(1)} GiB`;
  return `${(bytes / MIB).toFixed(1)} MiB`;
}

/** How workspaces are encrypted; the helper is also used to drop keys of leftovers when 'off'. */
interface WorkspaceKeys {
  encrypt: boolean;
  helper: string;
}

/**
 * Makes `<mount>/workspace`, owned by the sandbox uid, mode 0700, and (when encrypting) gives
 * it its own key and policy while it is still empty. The filesystem root stays root's (0711:
 * the sandbox uid may traverse it, nothing more).
 */
async function prepareWorkspaceDirectory(
  mount: string,
  uid: number,
  gid: number,
  keys: WorkspaceKeys,
): Promise<string> {
  await rmdir(join(mount, 'lost+found')).catch(() => undefined);
  await chmod(mount, 0o711);
  const dir = join(mount, WORKSPACE_SUBDIR);
  await mkdir(dir, { mode: 0o700 });
  if (keys.encrypt) await encryptDirectory(keys.helper, dir);
  await chown(dir, uid, gid);
  await chmod(dir, 0o700);
  const root = await lstat(mount);
  const st = await lstat(dir);
  if (
    root.uid !== 0 ||
    (root.mode & 0o777) !== 0o711 ||
    !st.isDirectory() ||
    st.uid !== uid ||
    st.gid !== gid ||
    (st.mode & 0o777) !== 0o700
  ) {
    throw new PalisadeError(
      'SANDBOX_CREATE_FAILED',
      'workspace directory has the wrong owner or mode after creation',
    );
  }
  return dir;
}

/**
 * Drops the workspace's key from its filesystem before unmount, so a lazily unmounted (still
 * busy) filesystem stops serving plaintext at once. Best effort: the kernel also wipes the keys
 * when the filesystem is finally released, and a destroy must not stop half-way.
 */
async function forgetWorkspaceKey(mount: string, keys: WorkspaceKeys): Promise<void> {
  const dir = join(mount, WORKSPACE_SUBDIR);
  const st = await lstat(dir).catch(() => undefined);
  if (!st?.isDirectory()) return;
  await removeDirectoryKey(keys.helper, dir).catch(() => undefined);
}

async function reserveImage(image: string, bytes: number): Promise<void> {
  // O_EXCL|O_NOFOLLOW: never reuse or follow something already at that name.
  const handle = await open(
    image,
    fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW,
    0o600,
  );
  try {
    await handle.truncate(bytes);
  } finally {
    await handle.close();
  }
}

async function formatImage(image: string, inodes: number, encrypt: boolean): Promise<void> {
  const result = await runCommand('mkfs.ext4', [
    '-q',
    '-F',
    '-b',
    String(BLOCK_SIZE),
    '-m',
    '0',
    '-N',
    String(inodes),
    '-O',
    encrypt ? '^resize_inode,encrypt' : '^resize_inode',
    '-E',
    'lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0',
    image,
  ]);
  if (result.spawnError?.code === 'ENOENT') {
    throw requirementMissing(
      'mkfs.ext4 is not installed',
      'apt-get install e2fsprogs',
      result.spawnError,
    );
  }
  if (result.status !== 0) {
    throw new PalisadeError(
      'SANDBOX_CREATE_FAILED',
      `mkfs.ext4 failed for the workspace image: ${firstLine(result.stderr)}`,
    );
  }
}

async function mountImage(image: string, path: string): Promise<void> {
  const result = await runCommand('mount', ['-t', 'ext4', '-o', MOUNT_OPTIONS, image, path]);
  if (result.status === 0) return;
  const reason = firstLine(result.stderr) || result.spawnError?.message || 'unknown error';
  if (result.spawnError?.code === 'ENOENT') {
    throw requirementMissing('the mount program is missing', 'apt-get install mount');
  }
  if (/loop/i.test(reason)) {
    throw requirementMissing(
      `cannot attach a loop device (${reason})`,
      'enable loop devices: modprobe loop (kernel CONFIG_BLK_DEV_LOOP); in a container pass /dev/loop-control and /dev/loop* and CAP_SYS_ADMIN',
    );
  }
  if (/permission denied|not permitted|must be superuser/i.test(reason)) {
    throw requirementMissing(
      `mounting is not permitted (${reason})`,
      'run the engine as root (CAP_SYS_ADMIN)',
    );
  }
  throw requirementMissing(
    `cannot mount an ext4 image (${reason})`,
    'use a kernel with ext4 support (CONFIG_EXT4_FS)',
  );
}

async function unmountAll(path: string): Promise<void> {
  // A path can carry stacked mounts; take them all off. Bounded: never loop forever.
  for (let attempt = 0; attempt < 8; attempt++) {
    const mounted = (await readMounts()).some((m) => m.mountPoint === path);
    if (!mounted) return;
    let result = await runCommand('umount', [path]);
    if (result.status !== 0 && /busy/i.test(result.stderr)) {
      // Still in use (e.g. a process that has not died yet): detach now; the kernel frees the
      // filesystem and the loop device (autoclear) when the last user goes.
      result = await runCommand('umount', ['-l', path]);
    }
    if (result.status !== 0) {
      throw new PalisadeError('INTERNAL', `cannot unmount workspace: ${firstLine(result.stderr)}`);
    }
  }
  throw new PalisadeError('INTERNAL', 'cannot unmount workspace: still mounted after 8 attempts');
}

async function ensureRootDirectory(path: string, mode: number): Promise<void> {
  try {
    await mkdir(path, { mode });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const st = await lstat(path);
  if (!st.isDirectory() || st.uid !== 0) {
    throw new PalisadeError(
      'INVALID_PATH',
      'workspace pool directory must be a real directory owned by root (not a symlink); remove it and retry',
    );
  }
  // Group/other may at most traverse: a sandbox uid must reach its own 0700 workspace root.
  await chmod(path, mode);
}

/**
 * mkdir -p, one component at a time. Node 20's `mkdir({ recursive: true })` spins forever on
 * some pseudo filesystems (e.g. a path under /proc), so it is not used for operator input.
 */
async function makeDirectories(path: string, mode: number): Promise<void> {
  const parts = path.split('/').filter((p) => p.length > 0);
  let current = '';
  for (const part of parts) {
    current += '/' + part;
    try {
      await mkdir(current, { mode });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
}

async function checkRequirements(): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw requirementMissing(
      'the engine is not running as root',
      'run the engine as root (mounting needs CAP_SYS_ADMIN)',
    );
  }
  const filesystems = await readFile('/proc/filesystems', 'utf8');
  if (!/\bext4\b/.test(filesystems)) {
    throw requirementMissing('the kernel has no ext4 support', 'use a kernel with CONFIG_EXT4_FS');
  }
  if (!(await exists('/dev/loop-control'))) {
    throw requirementMissing(
      '/dev/loop-control is missing (no loop device support)',
      'modprobe loop (kernel CONFIG_BLK_DEV_LOOP); in a container pass /dev/loop-control and /dev/loop*',
    );
  }
}

/** Proves the whole chain (mkfs, loop, mount, ownership) works before any sandbox relies on it. */
async function probe(root: string, keys: WorkspaceKeys): Promise<void> {
  const image = join(root, 'probe.img');
  const path = join(root, 'probe');
  await unmountAll(path);
  await rm(path, { recursive: true, force: true });
  await rm(image, { force: true });
  try {
    await (async () => {
      await reserveImage(image, PROBE_BYTES);
      await formatImage(image, MIN_INODES, keys.encrypt);
    })().catch((err: unknown) => {
      if (err instanceof PalisadeError && err.code === 'REQUIREMENT_MISSING') throw err;
      throw requirementMissing(
        'mkfs.ext4 cannot build a workspace image',
        'check that e2fsprogs >= 1.43 is installed',
        err,
      );
    });
    await mkdir(path, { mode: 0o700 });
    await mountImage(image, path);
    if (keys.encrypt) {
      const dir = join(path, WORKSPACE_SUBDIR);
      await mkdir(dir, { mode: 0o700 });
      try {
        await encryptDirectory(keys.helper, dir).catch((err: unknown) => {
          if (err instanceof PalisadeError && err.code === 'REQUIREMENT_MISSING') throw err;
          throw encryptionMissing('a probe workspace could not be encrypted', err);
        });
        const status = await readEncryptionStatus(keys.helper, dir);
        if (!status.encrypted || status.keyStatus !== 'present') {
          throw encryptionMissing('the probe workspace did not report an active encryption policy');
        }
      } finally {
        await forgetWorkspaceKey(path, keys);
      }
    }
  } finally {
    await unmountAll(path).catch(() => undefined);
    await rm(path, { recursive: true, force: true });
    await rm(image, { force: true });
  }
}

export async function openWorkspacePool(options: WorkspacePoolOptions): Promise<WorkspacePool> {
  const dataDir = options?.dataDir;
  if (typeof dataDir !== 'string' || !isAbsolute(dataDir) || resolve(dataDir) !== dataDir) {
    throw new PalisadeError('INVALID_PATH', 'dataDir must be an absolute, normalised path');
  }
  const budget = options.sizeBytes ?? DEFAULT_POOL_BYTES;
  if (!Number.isSafeInteger(budget) || budget < MIN_WORKSPACE_BYTES || budget > MAX_POOL_BYTES) {
    throw new PalisadeError(
      'INVALID_LIMIT',
      `workspace pool size must be an integer between 16 MiB and 1 PiB`,
      {
        field: 'sizeBytes',
      },
    );
  }
  const encryption = options.encryption ?? 'required';
  if (encryption !== 'required' && encryption !== 'off') {
    throw new PalisadeError('INVALID_ARGUMENT', "workspaceEncryption must be 'required' or 'off'", {
      field: 'workspaceEncryption',
    });
  }
  const keys: WorkspaceKeys = {
    encrypt: encryption === 'required',
    helper: options.fscryptHelper ?? defaultFscryptHelper(),
  };
  await checkRequirements();
  if (keys.encrypt) {
    const support = await checkEncryptionSupport(keys.helper);
    if (!support.supported) throw encryptionMissing(support.reason);
  }
  const root = join(dataDir, 'workspaces');
  try {
    await makeDirectories(dataDir, 0o711);
    await ensureRootDirectory(root, 0o711);
    await ensureRootDirectory(join(root, 'images'), 0o700);
    await ensureRootDirectory(join(root, 'mnt'), 0o711);
  } catch (err) {
    if (err instanceof PalisadeError) throw err;
    throw new PalisadeError(
      'INVALID_PATH',
      `cannot create the workspace pool directories in dataDir (${(err as NodeJS.ErrnoException).code ?? 'error'}): ` +
        'choose a writable local directory for the engine data',
      { field: 'dataDir' },
      { cause: err },
    );
  }
  await probe(root, keys);
  const pool = new LoopImagePool(root, dataDir, budget, keys);
  await pool.recover();
  return pool;
}
