/**
 * The built-in dangerous-command list. It is evaluated on parsed commands (never on
 * substrings of the raw text) and applies even when a broad allow rule matches. It is
 * advisory: the kernel sandbox is the boundary; this list only catches the obvious.
 */
import { canonicalPath } from './paths.js';
import { bashMatches, compileBashSpecifier, parseRule, type BashMatcher } from './rules.js';
import { commandName, type ShellCommand } from './shell/index.js';
import type { DangerousRuleInput } from './types.js';
import { PalisadeError } from '../errors/index.js';

export interface DangerMatch {
  /** Stable identifier shown as the rule, e.g. `builtin:privilege-escalation`. */
  id: string;
  effect: 'deny' | 'ask';
  reason: string;
}

export interface DangerousList {
  /** `bases`: the directories relative paths may be relative to (start cwd, then cd targets). */
  check(cmd: ShellCommand, bases: readonly string[]): DangerMatch[];
}

const PRIVILEGE = new Set([
  'sudo',
  'doas',
  'su',
  'pkexec',
  'runuser',
  'setpriv',
  'chroot',
  'nsenter',
  'unshare',
  'capsh',
]);
const DOWNLOADERS = new Set([
  'curl',
  'wget',
  'fetch',
  'aria2c',
  'http',
  'https',
  'lwp-download',
  'lwp-request',
  'nc',
  'ncat',
  'netcat',
  'socat',
  'telnet',
  'ftp',
  'tftp',
  'scp',
  'rsync',
  'git',
]);
const NETCATS = new Set(['nc', 'ncat', 'netcat', 'nc.traditional', 'nc.openbsd', 'busybox']);
const FORMATTERS = new Set([
  'mkfs',
  'mke2fs',
  'mkswap',
  'wipefs',
  'fdisk',
  'sfdisk',
  'parted',
  'cfdisk',
  'gdisk',
  'sgdisk',
  'blkdiscard',
  'hdparm',
]);
const CRITICAL_PATHS = new Set([
  '/',
  '/bin',
  '/boot',
  '/dev',
  '/etc',
  '/home',
  '/lib',
  '/lib64',
  '/opt',
  '/proc',
  '/root',
  '/sbin',
  '/srv',
  '/sys',
  '/usr',
  '/var',
]);
const HARMLESS_DEVICES = new Set([
  '/dev/null',
  '/dev/zero',
  '/dev/stdout',
  '/dev/stderr',
  '/dev/stdin',
  '/dev/tty',
  '/dev/random',
  '/dev/urandom',
  '/dev/full',
]);

/** Short options (e.g. `-rf`) contain `letter`, or a long option equals `long`. */
function hasFlag(argv: readonly string[], letters: string, long: readonly string[] = []): boolean {
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--') return false;
    if (long.includes(a)) return true;
    if (a.startsWith('-') && !a.startsWith('--')) {
      for (const l of letters) if (a.includes(l)) return true;
    }
  }
  return false;
}

function inlineCode(name: string, argv: readonly string[]): boolean {
  const base = name.replace(/[0-9.]+$/, '');
  const first = argv.slice(1);
  const short = (letters: string): boolean =>
    first.some(
      (a) => a.startsWith('-') && !a.startsWith('--') && [...letters].some((l) => a.includes(l)),
    );
  switch (base) {
    case 'python':
    case 'pypy':
      return short('c');
    case 'perl':
      return short('eE');
    case 'ruby':
    case 'lua':
    case 'osascript':
      return short('e');
    case 'node':
    case 'nodejs':
    case 'bun':
      return (
        short('ep') ||
        first.some(
          (a) =>
            a === '--eval' ||
            a === '--print' ||
            a.startsWith('--eval=') ||
            a.startsWith('--print='),
        )
      );
    case 'deno':
      return first[0] === 'eval';
    case 'php':
      return short('r');
    case 'Rscript':
      return short('e');
    default:
      return false;
  }
}

function isDownloadOrDecode(cmd: ShellCommand): boolean {
  const name = commandName(cmd.argv[0] ?? '');
  if (DOWNLOADERS.has(name)) return true;
  if (
    (name === 'base64' || name === 'base32' || name === 'basenc') &&
    hasFlag(cmd.argv, 'dD', ['--decode'])
  )
    return true;
  if (name === 'xxd' && hasFlag(cmd.argv, 'r', ['-revert'])) return true;
  if (name === 'openssl') return true;
  if (
    name === 'uudecode' ||
    name === 'gunzip' ||
    name === 'zcat' ||
    name === 'bzcat' ||
    name === 'xzcat'
  )
    return true;
  return false;
}

const BUILTIN_CHECKS: Array<
  (cmd: ShellCommand, name: string, bases: readonly string[]) => DangerMatch | null
> = [
  (cmd, name) => {
    const wrapper = cmd.wrappers.find((w) => w === 'sudo' || w === 'doas');
    if (wrapper || PRIVILEGE.has(name)) {
      return {
        id: 'builtin:privilege-escalation',
        effect: 'deny',
        reason: `${wrapper ?? name} changes privileges`,
      };
    }
    return null;
  },
  (cmd, name) => {
    if (name !== 'chmod' && name !== 'install') return null;
    for (const a of cmd.argv.slice(1)) {
      if (/^[ugoa]*[-+=][rwxXt]*s/.test(a) || /^[0-7]?[2-7][0-7]{3}$/.test(a)) {
        return {
          id: 'builtin:setuid',
          effect: 'deny',
          reason: `${name} ${a} sets a setuid/setgid bit`,
        };
      }
    }
    return null;
  },
  (cmd) => {
    if (!cmd.stdinProgram || cmd.upstream.length === 0) return null;
    const source = cmd.upstream.find(isDownloadOrDecode);
    if (!source) return null;
    return {
      id: 'builtin:download-and-execute',
      effect: 'deny',
      reason: `runs code piped in from ${commandName(source.argv[0] ?? '')}, which cannot be checked`,
    };
  },
  (cmd, name) => {
    if (!inlineCode(name, cmd.argv)) return null;
    return {
      id: 'builtin:inline-interpreter',
      effect: 'ask',
      reason: `${name} runs inline code that is not analysed`,
    };
  },
  (cmd, name) => {
    if (NETCATS.has(name) && hasFlag(cmd.argv, 'ec', ['--exec', '--sh-exec', '--lua-exec'])) {
      return {
        id: 'builtin:reverse-shell',
        effect: 'deny',
        reason: `${name} with -e/-c connects a program to the network`,
      };
    }
    if (name === 'socat' && cmd.argv.some((a) => /(^|[,:])(exec|system):/i.test(a))) {
      return {
        id: 'builtin:reverse-shell',
        effect: 'deny',
        reason: 'socat exec:/system: connects a program to the network',
      };
    }
    const tcp = cmd.redirectTargets.find(
      (t) => t.startsWith('/dev/tcp/') || t.startsWith('/dev/udp/'),
    );
    if (tcp !== undefined) {
      return {
        id: 'builtin:reverse-shell',
        effect: 'deny',
        reason: `redirects to ${tcp}, a raw network connection`,
      };
    }
    return null;
  },
  (cmd, name, bases) => {
    if (
      name !== 'rm' &&
      name !== 'chmod' &&
      name !== 'chown' &&
      name !== 'chgrp' &&
      name !== 'shred'
    )
      return null;
    if (name === 'rm' && cmd.argv.includes('--no-preserve-root')) {
      return { id: 'builtin:destructive', effect: 'deny', reason: 'rm --no-preserve-root' };
    }
    const recursive = hasFlag(cmd.argv, name === 'rm' ? 'rR' : 'R', ['--recursive']);
    if (!recursive && name !== 'shred') return null;
    for (const a of cmd.argv.slice(1)) {
      if (a.startsWith('-')) continue;
      const target = a.endsWith('/*') ? a.slice(0, -2) || '/' : a === '*' ? '.' : a;
      for (const base of bases) {
        let canonical: string;
        try {
          canonical = canonicalPath(target, base, '/workspace');
        } catch {
          continue;
        }
        if (CRITICAL_PATHS.has(canonical) || (name === 'shred' && canonical.startsWith('/dev/'))) {
          return {
            id: 'builtin:destructive',
            effect: 'deny',
            reason: `${name} ${name === 'shred' ? '' : '-r '}on ${canonical}`,
          };
        }
      }
    }
    return null;
  },
  (cmd, name) => {
    if (FORMATTERS.has(name) || name.startsWith('mkfs.')) {
      return {
        id: 'builtin:destructive',
        effect: 'deny',
        reason: `${name} formats or repartitions disks`,
      };
    }
    const device = cmd.files.find(
      (f) =>
        f.tool === 'Write' &&
        f.path.startsWith('/dev/') &&
        !HARMLESS_DEVICES.has(f.path) &&
        !f.path.startsWith('/dev/fd/'),
    );
    if (device)
      return {
        id: 'builtin:destructive',
        effect: 'deny',
        reason: `writes to the device ${device.path}`,
      };
    return null;
  },
];

/** Command names some built-in check looks at; anything else skips the name-specific checks. */
const CHECKED_NAMES: ReadonlySet<string> = new Set([
  ...PRIVILEGE,
  ...NETCATS,
  ...FORMATTERS,
  'chmod',
  'install',
  'socat',
  'rm',
  'chown',
  'chgrp',
  'shred',
  'deno',
  'bun',
  'osascript',
  'Rscript',
]);
const VERSIONED_INTERPRETER = /^(python|pypy|perl|ruby|lua|php|node|nodejs)[0-9.]*$/;

/** Cheap pre-filter so ordinary commands (git, ls, npm) skip the checks entirely. */
function mayBeDangerous(cmd: ShellCommand, name: string): boolean {
  return (
    cmd.wrappers.length > 0 ||
    cmd.stdinProgram ||
    cmd.redirectTargets.length > 0 ||
    CHECKED_NAMES.has(name) ||
    name.startsWith('mkfs') ||
    VERSIONED_INTERPRETER.test(name) ||
    cmd.files.some((f) => f.tool === 'Write' && f.path.startsWith('/dev/'))
  );
}

interface ExtraEntry {
  matcher: BashMatcher;
  input: DangerousRuleInput;
}

/** The built-in list plus operator additions (validated here; errors say which entry). */
export function createDangerousList(extra: readonly DangerousRuleInput[] = []): DangerousList {
  const extras: ExtraEntry[] = extra.map((input, index) => {
    if (
      typeof input !== 'object' ||
      input === null ||
      (input.effect !== 'deny' && input.effect !== 'ask') ||
      typeof input.reason !== 'string'
    ) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `dangerous.extra[${index}]: expected { rule: "Bash(…)", effect: "deny" | "ask", reason: "…" }`,
      );
    }
    const rule = parseRule(input.rule, input.effect);
    if (rule.tool !== 'Bash')
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `dangerous.extra[${index}]: only Bash(…) rules can be dangerous-command entries`,
      );
    return { matcher: compileBashSpecifier(rule.specifier), input };
  });
  return {
    check(cmd: ShellCommand, bases: readonly string[]): DangerMatch[] {
      const out: DangerMatch[] = [];
      if (cmd.argv.length === 0 && cmd.files.length === 0 && cmd.redirectTargets.length === 0)
        return out;
      const name = commandName(cmd.argv[0] ?? '');
      if (mayBeDangerous(cmd, name)) {
        for (const check of BUILTIN_CHECKS) {
          const match = check(cmd, name, bases);
          if (match) out.push(match);
        }
      }
      if (extras.length > 0 && cmd.argv.length > 0) {
        const normalised = [name, ...cmd.argv.slice(1)];
        for (const e of extras) {
          if (bashMatches(e.matcher, normalised) || bashMatches(e.matcher, cmd.argv)) {
            out.push({ id: e.input.rule, effect: e.input.effect, reason: e.input.reason });
          }
        }
      }
      return out;
    },
  };
}
