/*
 * palisade-files: one file operation per invocation, run INSIDE a sandbox through the normal
 * exec path (as the sandbox user, in the sandbox's mount namespace, under its seccomp filter).
 * The kernel therefore resolves every path against the sandbox's own view and enforces the
 * sandbox user's permissions; this program adds no privilege and trusts nothing it reads.
 *
 * Paths arrive hex-encoded so that any byte string (also non-UTF-8 names, or names starting
 * with '-') survives argv intact. Output is bounded by the caller's limits. On failure one JSON
 * line {"code":..., "op":..., "errno":...} goes to stderr and the exit status is 1.
 *
 *   read   HEXPATH OFFSET LENGTH [IDENT]          file bytes -> stdout; {"ident":...} -> stderr
 *   write  HEXPATH MAXBYTES MODE|- CREATEONLY     stdin -> temp file in the same dir -> rename
 *   list   HEXPATH MAXENTRIES                     JSON lines, names base64
 *   stat   HEXPATH                                one JSON line (lstat: symlinks not followed)
 *   mkdir  HEXPATH PARENTS MODE
 *   move   HEXFROM HEXTO OVERWRITE
 *   remove HEXPATH RECURSIVE                      never follows a symlink while recursing
 *   search HEXDIR HEXGLOB MAXRESULTS MAXDEPTH     JSON lines, relative paths base64
 *   edit   HEXPATH OLDLEN REPLACEALL MAXBYTES     stdin = old text then new text
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define PATH_BYTES_MAX 4096
#define IO_CHUNK (256 * 1024)
#define REMOVE_DEPTH_MAX 256
#define SEARCH_DEPTH_MAX 64
#define SEARCH_VISIT_MAX 1000000L
#define GLOB_SEGMENTS_MAX 64

/* The temp file of an in-flight write. Process-wide because the signal handler must remove
 * it when the engine aborts the write (SIGTERM/SIGINT/SIGHUP); this program runs one
 * operation and exits, so there is no other state to share it with. */
static volatile sig_atomic_t tmp_active = 0;
static int tmp_dirfd = -1;
static char tmp_name[64];

static void on_abort_signal(int sig) {
  (void)sig;
  if (tmp_active) unlinkat(tmp_dirfd, tmp_name, 0);
  _exit(3);
}

static const char *code_for_errno(int e) {
  switch (e) {
    case ENOENT: return "NOT_FOUND";
    case ENOTDIR: return "NOT_A_DIRECTORY";
    case EISDIR: return "IS_A_DIRECTORY";
    case EACCES:
    case EPERM: return "PERMISSION_DENIED";
    case EROFS: return "READ_ONLY";
    case EEXIST: return "EXISTS";
    case ENOTEMPTY: return "NOT_EMPTY";
    case ENOSPC:
    case EDQUOT: return "NO_SPACE";
    case EFBIG: return "TOO_LARGE";
    case ELOOP: return "LOOP";
    case ENAMETOOLONG: return "INVALID";
    case EXDEV: return "CROSS_DEVICE";
    case EBUSY: return "BUSY";
    case EINVAL: return "INVALID";
    default: return "IO";
  }
}

static void out_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      _exit(4); /* the engine went away; nothing useful left to report */
    }
    p += n;
    len -= (size_t)n;
  }
}

static void cleanup_tmp(void) {
  if (tmp_active) {
    unlinkat(tmp_dirfd, tmp_name, 0);
    tmp_active = 0;
  }
}

/* Reports an error as one JSON line and exits. `detail` must be plain ASCII without quotes. */
static void fail_code(const char *code, const char *op, int err, const char *detail) {
  cleanup_tmp();
  char line[512];
  int n = snprintf(line, sizeof line, "{\"code\":\"%s\",\"op\":\"%s\",\"errno\":%d,\"detail\":\"%s\"}\n",
                   code, op, err, detail ? detail : "");
  if (n > 0) out_all(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
  _exit(1);
}

static void fail_errno(const char *op) {
  int e = errno;
  fail_code(code_for_errno(e), op, e, "");
}

static void invalid(const char *detail) { fail_code("INVALID", "args", 0, detail); }

/* ---------- argument decoding ---------- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes a hex path into `out` (NUL-terminated). Empty, odd, NUL-containing or overlong is invalid. */
static void decode_path(const char *hex, char *out) {
  size_t l = strlen(hex);
  if (l == 0 || l % 2 != 0 || l / 2 >= PATH_BYTES_MAX) invalid("path must be 1-4095 bytes, hex-encoded");
  for (size_t i = 0; i < l / 2; i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) invalid("path is not valid hex");
    out[i] = (char)(hi * 16 + lo);
    if (out[i] == '\0') invalid("path contains a NUL byte");
  }
  out[l / 2] = '\0';
}

static uint64_t parse_u64(const char *s, uint64_t max, const char *what) {
  if (*s == '\0') invalid(what);
  uint64_t v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') invalid(what);
    unsigned d = (unsigned)(*p - '0');
    if (v > (UINT64_MAX - d) / 10) invalid(what);
    v = v * 10 + d;
  }
  if (v > max) invalid(what);
  return v;
}

static int parse_flag(const char *s, const char *what) { return (int)parse_u64(s, 1, what); }

/* ---------- output helpers ---------- */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Appends base64 of `len` bytes to `out` (capacity must be >= 4*ceil(len/3)+1). */
static size_t b64(const unsigned char *in, size_t len, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16;
    if (i + 1 < len) v |= (uint32_t)in[i + 1] << 8;
    if (i + 2 < len) v |= in[i + 2];
    out[o++] = B64[(v >> 18) & 63];
    out[o++] = B64[(v >> 12) & 63];
    out[o++] = i + 1 < len ? B64[(v >> 6) & 63] : '=';
    out[o++] = i + 2 < len ? B64[v & 63] : '=';
  }
  out[o] = '\0';
  return o;
}

static const char *type_name(mode_t m) {
  if (S_ISREG(m)) return "file";
  if (S_ISDIR(m)) return "directory";
  if (S_ISLNK(m)) return "symlink";
  if (S_ISFIFO(m)) return "fifo";
  if (S_ISSOCK(m)) return "socket";
  if (S_ISCHR(m)) return "char-device";
  if (S_ISBLK(m)) return "block-device";
  return "other";
}

/* Buffered stdout for JSON lines; flushed before exit. */
static char obuf[64 * 1024];
static size_t olen = 0;
static void oflush(void) {
  out_all(1, obuf, olen);
  olen = 0;
}
static void oput(const char *s, size_t len) {
  if (olen + len > sizeof obuf) oflush();
  if (len > sizeof obuf) {
    out_all(1, s, len);
    return;
  }
  memcpy(obuf + olen, s, len);
  olen += len;
}

/* One JSON line describing an entry; `name` is emitted base64 under `key`. */
static void emit_entry(const char *key, const char *name, size_t name_len, const struct stat *st,
                       const char *target, size_t target_len) {
  static char enc[(PATH_BYTES_MAX * 4) / 3 + 8];
  static char line[2 * sizeof enc + 256];
  b64((const unsigned char *)name, name_len, enc);
  int n = snprintf(line, sizeof line,
                   "{\"%s\":\"%s\",\"type\":\"%s\",\"size\":%" PRId64 ",\"mode\":%u,\"mtimeMs\":%" PRId64
                   ",\"uid\":%u,\"gid\":%u",
                   key, enc, type_name(st->st_mode), (int64_t)st->st_size, (unsigned)(st->st_mode & 07777),
                   (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000, (unsigned)st->st_uid,
                   (unsigned)st->st_gid);
  if (n < 0 || (size_t)n >= sizeof line) invalid("entry too long");
  oput(line, (size_t)n);
  if (target) {
    b64((const unsigned char *)target, target_len, enc);
    oput(",\"target\":\"", 11);
    oput(enc, strlen(enc));
    oput("\"", 1);
  }
  oput("}\n", 2);
}

/* ---------- path helpers ---------- */

/* Splits `path` into an open directory fd and its last component. The last component must
 * be a real name (not empty, "." or ".."). Intermediate components resolve normally: they
 * are resolved by the kernel inside the sandbox's view. */
static int open_parent(const char *path, char *base_out, const char *op) {
  size_t l = strlen(path);
  while (l > 1 && path[l - 1] == '/') l--; /* tolerate trailing slashes */
  const char *end = path + l;
  const char *slash = NULL;
  for (const char *p = path; p < end; p++)
    if (*p == '/') slash = p;
  const char *base = slash ? slash + 1 : path;
  size_t blen = (size_t)(end - base);
  if (blen == 0 || blen > NAME_MAX || (blen == 1 && base[0] == '.') || (blen == 2 && base[0] == '.' && base[1] == '.'))
    fail_code("INVALID", op, 0, "the path must end in a file or directory name");
  memcpy(base_out, base, blen);
  base_out[blen] = '\0';
  char dir[PATH_BYTES_MAX];
  if (!slash) {
    strcpy(dir, ".");
  } else if (slash == path) {
    strcpy(dir, "/");
  } else {
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = '\0';
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail_errno(op);
  return fd;
}

static void make_tmp_name(void) {
  unsigned char rnd[8];
  if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) fail_errno("getrandom");
  static const char hx[] = "0123456789abcdef";
  char *p = tmp_name + sprintf(tmp_name, ".palisade-tmp-");
  for (size_t i = 0; i < sizeof rnd; i++) {
    *p++ = hx[rnd[i] >> 4];
    *p++ = hx[rnd[i] & 15];
  }
  *p = '\0';
}

/* Creates the temp file in `dirfd`; it is removed on any failure or abort signal. */
static int create_tmp(int dirfd) {
  for (int tries = 0; tries < 8; tries++) {
    make_tmp_name();
    tmp_dirfd = dirfd;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &old);
    int fd = openat(dirfd, tmp_name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0) tmp_active = 1;
    int e = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (fd >= 0) return fd;
    if (e != EEXIST) {
      errno = e;
      fail_errno("create");
    }
  }
  fail_code("IO", "create", EEXIST, "could not pick a temporary name");
  return -1;
}

/* Renames the temp file onto `base`, atomically replacing it (or refusing if createOnly). */
static void commit_tmp(int dirfd, const char *base, int create_only) {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGHUP);
  sigprocmask(SIG_BLOCK, &block, &old);
  int r = renameat2(dirfd, tmp_name, dirfd, base, create_only ? RENAME_NOREPLACE : 0);
  if (r == 0) tmp_active = 0;
  int e = errno;
  sigprocmask(SIG_SETMASK, &old, NULL);
  if (r < 0) {
    errno = e;
    fail_errno("rename");
  }
}

static void write_all_fd(int fd, const char *p, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno("write");
    }
    p += n;
    len -= (size_t)n;
  }
}

/* Mode for a replaced file: the caller's, else the existing regular file's, else 0644. */
static mode_t target_mode(int dirfd, const char *base, int has_mode, mode_t mode) {
  struct stat st;
  if (fstatat(dirfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (S_ISDIR(st.st_mode)) fail_code("IS_A_DIRECTORY", "write", EISDIR, "");
    if (!has_mode && S_ISREG(st.st_mode)) return st.st_mode & 07777;
  } else if (errno != ENOENT) {
    fail_errno("stat");
  }
  return has_mode ? mode : 0644;
}

/* ---------- operations ---------- */

static int op_read(int argc, char **argv) {
  if (argc != 5 && argc != 6) invalid("read takes PATH OFFSET LENGTH [IDENT]");
  char path[PATH_BYTES_MAX];
  decode_path(argv[2], path);
  uint64_t offset = parse_u64(argv[3], INT64_MAX, "bad offset");
  uint64_t length = parse_u64(argv[4], INT64_MAX, "bad length");
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) fail_errno("open");
  struct stat st;
  if (fstat(fd, &st) < 0) fail_errno("stat");
  if (S_ISDIR(st.st_mode)) fail_code("IS_A_DIRECTORY", "open", EISDIR, "");
  /* Devices and FIFOs can be endless or block forever; only regular files are read. */
  if (!S_ISREG(st.st_mode)) fail_code("INVALID", "open", 0, "not a regular file");
  char ident[128];
  snprintf(ident, sizeof ident, "%" PRIu64 ":%" PRIu64 ":%" PRId64 ".%09ld:%" PRId64, (uint64_t)st.st_dev,
           (uint64_t)st.st_ino, (int64_t)st.st_mtim.tv_sec, (long)st.st_mtim.tv_nsec, (int64_t)st.st_size);
  if (argc == 6 && strcmp(ident, argv[5]) != 0)
    fail_code("CHANGED", "read", 0, "the file changed while it was being read");
  static char buf[IO_CHUNK];
  uint64_t done = 0;
  while (done < length) {
    size_t want = length - done < IO_CHUNK ? (size_t)(length - done) : IO_CHUNK;
    ssize_t n = pread(fd, buf, want, (off_t)(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno("read");
    }
    if (n == 0) break;
    out_all(1, buf, (size_t)n);
    done += (uint64_t)n;
  }
  char line[192];
  int n = snprintf(line, sizeof line, "{\"ident\":\"%s\",\"size\":%" PRId64 "}\n", ident, (int64_t)st.st_size);
  out_all(2, line, (size_t)n);
  return 0;
}

static int op_write(int argc, char **argv) {
  if (argc != 6) invalid("write takes PATH MAXBYTES MODE CREATEONLY");
  char path[PATH_BYTES_MAX], base[NAME_MAX + 1];
  decode_path(argv[2], path);
  uint64_t max = parse_u64(argv[3], INT64_MAX, "bad max bytes");
  int has_mode = strcmp(argv[4], "-") != 0;
  mode_t mode = has_mode ? (mode_t)parse_u64(argv[4], 07777, "bad mode") : 0;
  int create_only = parse_flag(argv[5], "bad createOnly");
  int dirfd = open_parent(path, base, "open");
  mode_t final_mode = target_mode(dirfd, base, has_mode, mode);
  if (create_only && faccessat(dirfd, base, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
    fail_code("EXISTS", "create", EEXIST, "");
  int fd = create_tmp(dirfd);
  static char buf[IO_CHUNK];
  uint64_t total = 0;
  for (;;) {
    ssize_t n = read(0, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno("stdin");
    }
    if (n == 0) break;
    total += (uint64_t)n;
    if (total > max) fail_code("TOO_LARGE", "write", EFBIG, "");
    write_all_fd(fd, buf, (size_t)n);
  }
  if (fchmod(fd, final_mode) < 0) fail_errno("chmod");
  if (close(fd) < 0) fail_errno("write");
  commit_tmp(dirfd, base, create_only);
  char line[64];
  int n = snprintf(line, sizeof line, "{\"size\":%" PRIu64 "}\n", total);
  out_all(1, line, (size_t)n);
  return 0;
}

static int op_list(int argc, char **argv) {
  if (argc != 4) invalid("list takes PATH MAXENTRIES");
  char path[PATH_BYTES_MAX];
  decode_path(argv[2], path);
  uint64_t max = parse_u64(argv[3], 1000000, "bad max entries");
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail_errno("open");
  DIR *d = fdopendir(fd);
  if (!d) fail_errno("open");
  uint64_t count = 0;
  int truncated = 0;
  for (;;) {
    errno = 0;
    struct dirent *e = readdir(d);
    if (!e) {
      if (errno) fail_errno("list");
      break;
    }
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (count >= max) {
      truncated = 1;
      break;
    }
    struct stat st;
    if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
      if (errno == ENOENT) continue; /* removed while we listed */
      fail_errno("stat");
    }
    emit_entry("name", e->d_name, strlen(e->d_name), &st, NULL, 0);
    count++;
  }
  char line[64];
  int n = snprintf(line, sizeof line, "{\"end\":true,\"truncated\":%s}\n", truncated ? "true" : "false");
  oput(line, (size_t)n);
  oflush();
  return 0;
}

static int op_stat(int argc, char **argv) {
  if (argc != 3) invalid("stat takes PATH");
  char path[PATH_BYTES_MAX];
  decode_path(argv[2], path);
  struct stat st;
  if (lstat(path, &st) < 0) fail_errno("stat");
  char target[PATH_BYTES_MAX];
  ssize_t tl = -1;
  if (S_ISLNK(st.st_mode)) {
    tl = readlink(path, target, sizeof target - 1);
    if (tl < 0) tl = 0;
  }
  emit_entry("name", path, strlen(path), &st, tl >= 0 ? target : NULL, tl >= 0 ? (size_t)tl : 0);
  oflush();
  return 0;
}

static int op_mkdir(int argc, char **argv) {
  if (argc != 5) invalid("mkdir takes PATH PARENTS MODE");
  char path[PATH_BYTES_MAX];
  decode_path(argv[2], path);
  int parents = parse_flag(argv[3], "bad parents flag");
  mode_t mode = (mode_t)parse_u64(argv[4], 07777, "bad mode");
  umask(0);
  if (parents) {
    /* Create each missing ancestor; an existing ancestor must be (or resolve to) a directory. */
    size_t l = strlen(path);
    for (size_t i = 1; i < l; i++) {
      if (path[i] != '/') continue;
      path[i] = '\0';
      if (mkdir(path, 0755) < 0 && errno != EEXIST) fail_errno("mkdir");
      path[i] = '/';
    }
  }
  if (mkdir(path, mode) < 0) {
    int e = errno;
    struct stat st;
    if (e == EEXIST && parents && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    errno = e;
    fail_errno("mkdir");
  }
  return 0;
}

static int op_move(int argc, char **argv) {
  if (argc != 5) invalid("move takes FROM TO OVERWRITE");
  char from[PATH_BYTES_MAX], to[PATH_BYTES_MAX];
  decode_path(argv[2], from);
  decode_path(argv[3], to);
  int overwrite = parse_flag(argv[4], "bad overwrite flag");
  if (renameat2(AT_FDCWD, from, AT_FDCWD, to, overwrite ? 0 : RENAME_NOREPLACE) < 0) fail_errno("move");
  return 0;
}

/* Empties the directory open at `dirfd`. Every step is relative to an fd and never follows a
 * symlink: a directory swapped for a symlink mid-walk is unlinked as a symlink, not entered. */
static void remove_contents(int dirfd, int depth) {
  if (depth > REMOVE_DEPTH_MAX) fail_code("INVALID", "remove", 0, "directory tree is too deep");
  for (int pass = 0; pass < 64; pass++) {
    int dupfd = dup(dirfd);
    if (dupfd < 0) fail_errno("remove");
    DIR *d = fdopendir(dupfd);
    if (!d) fail_errno("remove");
    rewinddir(d);
    int seen = 0;
    for (;;) {
      errno = 0;
      struct dirent *e = readdir(d);
      if (!e) {
        if (errno) fail_errno("remove");
        break;
      }
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      seen = 1;
      if (unlinkat(dirfd, e->d_name, 0) == 0 || errno == ENOENT) continue;
      /* Linux reports a directory as EISDIR; anything else (EPERM, EACCES, EROFS) is final. */
      if (errno != EISDIR) fail_errno("remove");
      int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) {
        if (errno == ENOENT) continue;
        if (errno == ENOTDIR || errno == ELOOP) { /* swapped for a non-directory: retry next pass */
          continue;
        }
        fail_errno("remove");
      }
      remove_contents(sub, depth + 1);
      close(sub);
      if (unlinkat(dirfd, e->d_name, AT_REMOVEDIR) < 0 && errno != ENOENT) fail_errno("remove");
    }
    closedir(d);
    if (!seen) return;
  }
  fail_code("IO", "remove", 0, "the directory kept changing while it was removed");
}

static int op_remove(int argc, char **argv) {
  if (argc != 4) invalid("remove takes PATH RECURSIVE");
  char path[PATH_BYTES_MAX], base[NAME_MAX + 1];
  decode_path(argv[2], path);
  int recursive = parse_flag(argv[3], "bad recursive flag");
  int dirfd = open_parent(path, base, "remove");
  struct stat st;
  if (fstatat(dirfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0) fail_errno("remove");
  if (!S_ISDIR(st.st_mode)) {
    if (unlinkat(dirfd, base, 0) < 0) fail_errno("remove");
    return 0;
  }
  if (recursive) {
    int sub = openat(dirfd, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0) fail_errno("remove");
    remove_contents(sub, 0);
    close(sub);
  }
  if (unlinkat(dirfd, base, AT_REMOVEDIR) < 0) fail_errno("remove");
  return 0;
}

/* ----- search: glob over relative paths; "**" matches zero or more whole segments ----- */

static char *pat_seg[GLOB_SEGMENTS_MAX];
static int pat_n = 0;

static int glob_match(char **segs, int n) {
  /* ok[i][j]: pattern segments i.. match path segments j.. */
  static unsigned char ok[GLOB_SEGMENTS_MAX + 1][SEARCH_DEPTH_MAX + 2];
  for (int i = pat_n; i >= 0; i--) {
    for (int j = n; j >= 0; j--) {
      if (i == pat_n) {
        ok[i][j] = (j == n);
      } else if (strcmp(pat_seg[i], "**") == 0) {
        ok[i][j] = ok[i + 1][j] || (j < n && ok[i][j + 1]);
      } else {
        ok[i][j] = j < n && ok[i + 1][j + 1] && fnmatch(pat_seg[i], segs[j], 0) == 0;
      }
    }
  }
  return ok[0][0];
}

static uint64_t found = 0, search_max = 0;
static long visited = 0;
static int search_truncated = 0;
static unsigned search_depth_max = 0;
static char rel[PATH_BYTES_MAX];
static char *rel_seg[SEARCH_DEPTH_MAX + 1];

static void search_dir(int dirfd, size_t rel_len, int depth) {
  int dupfd = dup(dirfd);
  if (dupfd < 0) fail_errno("search");
  DIR *d = fdopendir(dupfd);
  if (!d) fail_errno("search");
  for (;;) {
    errno = 0;
    struct dirent *e = readdir(d);
    if (!e) break; /* a directory that vanished mid-walk is simply done */
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (++visited > SEARCH_VISIT_MAX) {
      search_truncated = 1;
      break;
    }
    size_t nl = strlen(e->d_name);
    if (rel_len + nl + 2 >= sizeof rel) continue;
    size_t start = rel_len ? rel_len + 1 : 0;
    if (rel_len) rel[rel_len] = '/';
    memcpy(rel + start, e->d_name, nl + 1);
    /* rel_seg entries point into a private copy so that '/' separators stay in `rel`. */
    static char segbuf[SEARCH_DEPTH_MAX + 1][NAME_MAX + 1];
    memcpy(segbuf[depth], e->d_name, nl + 1);
    rel_seg[depth] = segbuf[depth];
    struct stat st;
    if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;
    if (glob_match(rel_seg, depth + 1)) {
      if (found >= search_max) {
        search_truncated = 1;
        break;
      }
      emit_entry("path", rel, start + nl, &st, NULL, 0);
      found++;
    }
    if (S_ISDIR(st.st_mode) && (unsigned)depth + 1 < search_depth_max) {
      int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub >= 0) {
        search_dir(sub, start + nl, depth + 1);
        close(sub);
      }
    } else if (S_ISDIR(st.st_mode)) {
      search_truncated = 1;
    }
    if (search_truncated && found >= search_max) break;
  }
  rel[rel_len] = '\0';
  closedir(d);
}

static int op_search(int argc, char **argv) {
  if (argc != 6) invalid("search takes DIR GLOB MAXRESULTS MAXDEPTH");
  char path[PATH_BYTES_MAX];
  static char pattern[PATH_BYTES_MAX];
  decode_path(argv[2], path);
  decode_path(argv[3], pattern);
  search_max = parse_u64(argv[4], 100000, "bad max results");
  search_depth_max = (unsigned)parse_u64(argv[5], SEARCH_DEPTH_MAX, "bad max depth");
  if (search_depth_max == 0) invalid("max depth must be at least 1");
  if (pattern[0] == '/') invalid("the glob must be relative to the directory");
  for (char *p = pattern;;) {
    if (pat_n >= GLOB_SEGMENTS_MAX) invalid("the glob has too many segments");
    char *slash = strchr(p, '/');
    if (slash) *slash = '\0';
    if (*p == '\0') invalid("the glob has an empty segment");
    pat_seg[pat_n++] = p;
    if (!slash) break;
    p = slash + 1;
  }
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail_errno("open");
  search_dir(fd, 0, 0);
  char line[64];
  int n = snprintf(line, sizeof line, "{\"end\":true,\"truncated\":%s}\n", search_truncated ? "true" : "false");
  oput(line, (size_t)n);
  oflush();
  return 0;
}

static char *read_fd_bounded(int fd, uint64_t max, size_t *len_out, const char *op) {
  size_t cap = 64 * 1024, len = 0;
  char *buf = malloc(cap);
  if (!buf) fail_code("IO", op, ENOMEM, "out of memory");
  for (;;) {
    if (len == cap) {
      if (cap > max + 1) fail_code("TOO_LARGE", op, EFBIG, "");
      cap *= 2;
      char *nb = realloc(buf, cap);
      if (!nb) fail_code("IO", op, ENOMEM, "out of memory");
      buf = nb;
    }
    ssize_t n = read(fd, buf + len, cap - len);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno(op);
    }
    if (n == 0) break;
    len += (size_t)n;
    if (len > max) fail_code("TOO_LARGE", op, EFBIG, "");
  }
  *len_out = len;
  return buf;
}

static int op_edit(int argc, char **argv) {
  if (argc != 6) invalid("edit takes PATH OLDLEN REPLACEALL MAXBYTES");
  char path[PATH_BYTES_MAX], base[NAME_MAX + 1];
  decode_path(argv[2], path);
  uint64_t max = parse_u64(argv[5], INT64_MAX / 4, "bad max bytes");
  uint64_t old_len = parse_u64(argv[3], max, "bad old length");
  int replace_all = parse_flag(argv[4], "bad replaceAll flag");
  if (old_len == 0) invalid("the text to replace must not be empty");
  size_t in_len;
  char *in = read_fd_bounded(0, 2 * max, &in_len, "stdin");
  if (in_len < old_len) invalid("stdin is shorter than the old text");
  const char *old = in, *new_text = in + old_len;
  size_t new_len = in_len - old_len;

  int dirfd = open_parent(path, base, "open");
  int fd = openat(dirfd, base, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW);
  if (fd < 0 && errno == ELOOP)
    fail_code("INVALID", "open", ELOOP, "the path is a symbolic link; edit the file it points to");
  if (fd < 0) fail_errno("open");
  struct stat st;
  if (fstat(fd, &st) < 0) fail_errno("stat");
  if (S_ISDIR(st.st_mode)) fail_code("IS_A_DIRECTORY", "open", EISDIR, "");
  if (!S_ISREG(st.st_mode)) fail_code("INVALID", "open", 0, "not a regular file");
  if ((uint64_t)st.st_size > max) fail_code("TOO_LARGE", "edit", EFBIG, "");
  size_t len;
  char *data = read_fd_bounded(fd, max, &len, "read");
  close(fd);

  uint64_t count = 0;
  for (const char *p = data; (size_t)(data + len - p) >= old_len;) {
    const char *hit = memmem(p, (size_t)(data + len - p), old, old_len);
    if (!hit) break;
    count++;
    p = hit + old_len;
  }
  char detail[64];
  snprintf(detail, sizeof detail, "%" PRIu64, count);
  if (count == 0) fail_code("NO_MATCH", "edit", 0, "0");
  if (count > 1 && !replace_all) fail_code("NOT_UNIQUE", "edit", 0, detail);
  int64_t out_len = (int64_t)len + (int64_t)count * ((int64_t)new_len - (int64_t)old_len);
  if (out_len > (int64_t)max) fail_code("TOO_LARGE", "edit", EFBIG, "");

  int out = create_tmp(dirfd);
  const char *p = data;
  for (uint64_t i = 0; i < count; i++) {
    const char *hit = memmem(p, (size_t)(data + len - p), old, old_len);
    write_all_fd(out, p, (size_t)(hit - p));
    write_all_fd(out, new_text, new_len);
    p = hit + old_len;
  }
  write_all_fd(out, p, (size_t)(data + len - p));
  if (fchmod(out, st.st_mode & 07777) < 0) fail_errno("chmod");
  if (close(out) < 0) fail_errno("write");
  /* Refuse to replace a file that someone else changed since we read it (lost update). */
  struct stat now;
  if (fstatat(dirfd, base, &now, 0) < 0) fail_errno("stat");
  if (now.st_ino != st.st_ino || now.st_dev != st.st_dev || now.st_size != st.st_size ||
      now.st_mtim.tv_sec != st.st_mtim.tv_sec || now.st_mtim.tv_nsec != st.st_mtim.tv_nsec)
    fail_code("CHANGED", "edit", 0, "the file changed during the edit");
  commit_tmp(dirfd, base, 0);
  char line[64];
  int n = snprintf(line, sizeof line, "{\"replacements\":%" PRIu64 "}\n", count);
  out_all(1, line, (size_t)n);
  return 0;
}

int main(int argc, char **argv) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_abort_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) invalid("usage: palisade-files OPERATION ARGS...");
  const char *op = argv[1];
  if (strcmp(op, "read") == 0) return op_read(argc, argv);
  if (strcmp(op, "write") == 0) return op_write(argc, argv);
  if (strcmp(op, "list") == 0) return op_list(argc, argv);
  if (strcmp(op, "stat") == 0) return op_stat(argc, argv);
  if (strcmp(op, "mkdir") == 0) return op_mkdir(argc, argv);
  if (strcmp(op, "move") == 0) return op_move(argc, argv);
  if (strcmp(op, "remove") == 0) return op_remove(argc, argv);
  if (strcmp(op, "search") == 0) return op_search(argc, argv);
  if (strcmp(op, "edit") == 0) return op_edit(argc, argv);
  invalid("unknown operation");
  return 1;
}
