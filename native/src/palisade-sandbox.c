/*
 * palisade-sandbox: the two native halves of a Palisade sandbox.
 *
 *   palisade-sandbox launch --uid U --gid G [--cgroup-procs FILE]... -- BWRAP ARGS...
 *     Runs on the host as root. Joins the sandbox's cgroups *before* anything else runs
 *     (so bubblewrap and everything it starts are limited from the first instruction and
 *     the cgroup namespace bwrap creates is rooted at the sandbox's own cgroup), drops to
 *     the sandbox's unprivileged host uid/gid with no supplementary groups and
 *     no_new_privs, then execs bubblewrap.
 *
 *   palisade-sandbox agent [--cgroup-fd N]... [--bridge PORT:UNIXPATH]...
 *     Runs inside the sandbox as pid 1 (bwrap --as-pid-1), as the sandbox user, under the
 *     sandbox's seccomp filter. Speaks a framed protocol with the engine on stdin/stdout,
 *     starts execs (each in its own session and its own sub-cgroup "e<ID>" so the host can
 *     kill everything an exec started), relays their output, reaps every orphan, and serves
 *     network bridges (TCP listener on the sandbox loopback forwarded to a unix socket that
 *     the egress gateway serves on the host). When the engine closes the control channel the
 *     agent exits, and with it (pid 1) every process of the sandbox.
 *
 * Frame: u32 LE length of what follows, u8 type, u32 LE exec id, body.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

enum {
  /* engine -> agent */
  T_EXEC = 1,
  T_STDIN = 2,
  T_STDIN_CLOSE = 3,
  T_SIGNAL = 4,
  /* agent -> engine */
  T_READY = 0x81,
  T_STARTED = 0x82,
  T_START_FAILED = 0x83,
  T_STDOUT = 0x84,
  T_STDERR = 0x85,
  T_EXIT = 0x86,
  T_STDIN_ACK = 0x87,
  T_LOG = 0x88,
};

#define MAX_FRAME (1u << 20)          /* largest engine->agent frame */
#define MAX_EXECS 64                  /* concurrent execs per sandbox */
#define MAX_CGROUP_FDS 8
#define MAX_BRIDGES 4
#define MAX_CONNS 128                 /* concurrent bridged connections */
#define IO_CHUNK 65536
#define STDIN_BUF_MAX (256 * 1024)    /* pending stdin bytes per exec */
#define DRAIN_GRACE_MS 100            /* output kept flowing after the main process exits */

static void die(const char *what) {
  fprintf(stderr, "palisade-sandbox: %s: %s\n", what, strerror(errno));
  _exit(125);
}

/* ------------------------------------------------------------------ launch */

static int write_file(const char *path, const char *data) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = write(fd, data, strlen(data));
  int saved = errno;
  close(fd);
  errno = saved;
  return n == (ssize_t)strlen(data) ? 0 : -1;
}

static unsigned long parse_id(const char *s, const char *what) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || *end || end == s || v == 0 || v > 4294967294UL) {
    fprintf(stderr, "palisade-sandbox: invalid %s '%s' (must be a non-zero id)\n", what, s);
    _exit(125);
  }
  return v;
}

static int launch_main(int argc, char **argv) {
  unsigned long uid = 0, gid = 0;
  int i = 0;
  for (; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) { i++; break; }
    if (i + 1 >= argc) { fprintf(stderr, "palisade-sandbox: %s needs a value\n", argv[i]); return 125; }
    if (strcmp(argv[i], "--uid") == 0) uid = parse_id(argv[++i], "uid");
    else if (strcmp(argv[i], "--gid") == 0) gid = parse_id(argv[++i], "gid");
    else if (strcmp(argv[i], "--cgroup-procs") == 0) {
      /* "0" means the writing process itself; children (bwrap and everything below) inherit. */
      if (write_file(argv[++i], "0") < 0) {
        fprintf(stderr, "palisade-sandbox: cannot join cgroup %s: %s\n", argv[i], strerror(errno));
        return 125;
      }
    } else { fprintf(stderr, "palisade-sandbox: unknown launch option %s\n", argv[i]); return 125; }
  }
  if (!uid || !gid || i >= argc) {
    fprintf(stderr, "usage: palisade-sandbox launch --uid U --gid G [--cgroup-procs F]... -- BWRAP ARGS\n");
    return 125;
  }
  if (setgroups(0, NULL) < 0) die("setgroups");
  if (setresgid(gid, gid, gid) < 0) die("setresgid");
  if (setresuid(uid, uid, uid) < 0) die("setresuid");
  /* Paranoia: prove root cannot be regained. */
  if (setuid(0) == 0 || geteuid() == 0) { fprintf(stderr, "palisade-sandbox: privilege drop failed\n"); return 125; }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("no_new_privs");
  execv(argv[i], &argv[i]);
  die("exec bubblewrap");
  return 125;
}

/* ------------------------------------------------------------------- agent */

typedef struct {
  uint32_t id;
  int used;
  pid_t pid;             /* main process, 0 once reaped */
  int status;            /* wait status once reaped */
  int reaped;
  int out_fd, err_fd;    /* our read ends, -1 at EOF */
  int in_fd;             /* our write end of the child's stdin, -1 when closed */
  int in_close_pending;
  char *in_buf;
  size_t in_len;
  int status_fd;         /* exec-status pipe (CLOEXEC in the child) */
  long long exit_time_ms;
} exec_t;

typedef struct {
  int used;
  int a, b;              /* a: accepted in-sandbox TCP, b: unix socket to the gateway */
  char ab[IO_CHUNK], ba[IO_CHUNK];
  size_t ab_len, ab_off, ba_len, ba_off;
  int a_eof, b_eof, a_wshut, b_wshut;
} conn_t;

typedef struct {
  int listen_fd;
  char path[108];
} bridge_t;

static exec_t execs[MAX_EXECS];
static conn_t *conns[MAX_CONNS];
static bridge_t bridges[MAX_BRIDGES];
static int n_bridges;
static int cgroup_fds[MAX_CGROUP_FDS];
static int n_cgroup_fds;
static unsigned char *in_frame;
static size_t in_frame_len;

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = v & 0xff; p[1] = (v >> 8) & 0xff; p[2] = (v >> 16) & 0xff; p[3] = (v >> 24) & 0xff;
}
static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { struct pollfd pfd = {fd, POLLOUT, 0}; poll(&pfd, 1, -1); continue; }
      _exit(0); /* engine gone: the sandbox ends with us */
    }
    p += n; len -= (size_t)n;
  }
}

static void send_frame(uint8_t type, uint32_t id, const void *body, size_t len) {
  unsigned char hdr[9];
  put_u32(hdr, (uint32_t)(len + 5));
  hdr[4] = type;
  put_u32(hdr + 5, id);
  write_all(1, hdr, sizeof hdr);
  if (len) write_all(1, body, len);
}

static void send_log(const char *msg) { send_frame(T_LOG, 0, msg, strlen(msg)); }

static exec_t *find_exec(uint32_t id) {
  for (int i = 0; i < MAX_EXECS; i++)
    if (execs[i].used && execs[i].id == id) return &execs[i];
  return NULL;
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void report_start_failure(uint32_t id, int err, const char *stage) {
  unsigned char body[4 + 64];
  put_u32(body, (uint32_t)err);
  size_t l = strlen(stage);
  if (l > 64) l = 64;
  memcpy(body + 4, stage, l);
  send_frame(T_START_FAILED, id, body, 4 + l);
}

/* Child side of an exec: never returns. Errors go back through status_fd as errno + stage. */
static void exec_child(uint32_t id, int in_r, int out_w, int err_w, int status_w, const char *cwd,
                       char **argv, char **envp) {
  char name[32];
  const char *stage = "cgroup";
  snprintf(name, sizeof name, "e%u/cgroup.procs", id);
  for (int i = 0; i < n_cgroup_fds; i++) {
    int fd = openat(cgroup_fds[i], name, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "0", 1) != 1) goto fail;
    close(fd);
  }
  stage = "setup";
  sigset_t all;
  sigemptyset(&all);
  for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
  if (sigprocmask(SIG_SETMASK, &all, NULL) < 0) goto fail;
  if (setsid() < 0) goto fail;
  if (dup2(in_r, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0) goto fail;
  if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) goto fail;
  stage = "chdir";
  if (chdir(cwd) < 0) goto fail;
  stage = "exec";
  extern char **environ;
  environ = envp;
  execvp(argv[0], argv);
fail:;
  unsigned char msg[4 + 16];
  int err = errno;
  put_u32(msg, (uint32_t)err);
  size_t l = strlen(stage);
  memcpy(msg + 4, stage, l);
  if (write(status_w, msg, 4 + l) < 0) { /* nothing more we can do */ }
  _exit(127);
}

/* T_EXEC body: u32 argc, u32 envc, then NUL-terminated cwd, argv[argc], env[envc]. */
static void start_exec(uint32_t id, const unsigned char *body, size_t len) {
  if (find_exec(id)) { report_start_failure(id, EEXIST, "duplicate"); return; }
  exec_t *ex = NULL;
  for (int i = 0; i < MAX_EXECS; i++) if (!execs[i].used) { ex = &execs[i]; break; }
  if (!ex) { report_start_failure(id, EAGAIN, "too-many-execs"); return; }
  if (len < 8) { report_start_failure(id, EINVAL, "protocol"); return; }
  uint32_t argc = get_u32(body), envc = get_u32(body + 4);
  if (argc == 0 || argc > 65536 || envc > 65536) { report_start_failure(id, EINVAL, "protocol"); return; }
  /* Count strings and check every one is NUL-terminated inside the frame. */
  size_t want = 1 + argc + envc, have = 0;
  for (size_t off = 8; off < len; off++) if (body[off] == 0) have++;
  if (have != want || body[len - 1] != 0) { report_start_failure(id, EINVAL, "protocol"); return; }
  char **argv = calloc(argc + 1, sizeof(char *));
  char **envp = calloc(envc + 1, sizeof(char *));
  if (!argv || !envp) { free(argv); free(envp); report_start_failure(id, ENOMEM, "memory"); return; }
  const char *p = (const char *)body + 8;
  const char *cwd = p;
  p += strlen(p) + 1;
  for (uint32_t k = 0; k < argc; k++) { argv[k] = (char *)p; p += strlen(p) + 1; }
  for (uint32_t k = 0; k < envc; k++) { envp[k] = (char *)p; p += strlen(p) + 1; }
  char **vec = argv; /* freed with envp below */
  char dname[32];
  snprintf(dname, sizeof dname, "e%u", id);
  for (int i = 0; i < n_cgroup_fds; i++) {
    if (mkdirat(cgroup_fds[i], dname, 0755) < 0 && errno != EEXIST) {
      report_start_failure(id, errno, "cgroup");
      free(vec); free(envp);
      return;
    }
  }
  int inp[2], outp[2], errp[2], st[2];
  if (pipe2(inp, O_CLOEXEC) < 0) { report_start_failure(id, errno, "pipe"); free(vec); free(envp); return; }
  if (pipe2(outp, O_CLOEXEC) < 0) { close(inp[0]); close(inp[1]); report_start_failure(id, errno, "pipe"); free(vec); free(envp); return; }
  if (pipe2(errp, O_CLOEXEC) < 0) { close(inp[0]); close(inp[1]); close(outp[0]); close(outp[1]); report_start_failure(id, errno, "pipe"); free(vec); free(envp); return; }
  if (pipe2(st, O_CLOEXEC) < 0) { close(inp[0]); close(inp[1]); close(outp[0]); close(outp[1]); close(errp[0]); close(errp[1]); report_start_failure(id, errno, "pipe"); free(vec); free(envp); return; }
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(inp[0]); close(inp[1]); close(outp[0]); close(outp[1]); close(errp[0]); close(errp[1]); close(st[0]); close(st[1]);
    report_start_failure(id, e, "fork");
    free(vec); free(envp);
    return;
  }
  if (pid == 0) exec_child(id, inp[0], outp[1], errp[1], st[1], cwd, argv, envp);
  free(vec); free(envp);
  close(inp[0]); close(outp[1]); close(errp[1]); close(st[1]);
  memset(ex, 0, sizeof *ex);
  ex->used = 1;
  ex->id = id;
  ex->pid = pid;
  ex->out_fd = outp[0];
  ex->err_fd = errp[0];
  ex->in_fd = inp[1];
  ex->status_fd = st[0];
  set_nonblock(ex->out_fd);
  set_nonblock(ex->err_fd);
  set_nonblock(ex->in_fd);
  /* The status pipe tells us whether execve succeeded: EOF = success, data = failure. */
  unsigned char msg[32];
  ssize_t n;
  do n = read(ex->status_fd, msg, sizeof msg); while (n < 0 && errno == EINTR);
  close(ex->status_fd);
  ex->status_fd = -1;
  if (n >= 4) {
    msg[n < (ssize_t)sizeof msg ? n : (ssize_t)sizeof msg - 1] = 0;
    report_start_failure(id, (int)get_u32(msg), (const char *)msg + 4);
    /* The child _exits; reap it and forget the exec. */
    waitpid(pid, NULL, 0);
    close(ex->out_fd); close(ex->err_fd); close(ex->in_fd);
    ex->used = 0;
    return;
  }
  unsigned char body4[4];
  put_u32(body4, (uint32_t)pid);
  send_frame(T_STARTED, id, body4, 4);
}

static void flush_stdin(exec_t *ex) {
  while (ex->in_fd >= 0 && ex->in_len > 0) {
    ssize_t n = write(ex->in_fd, ex->in_buf, ex->in_len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      /* Reader gone (EPIPE): drop what is pending, acknowledge it so the engine does not wait. */
      unsigned char b[4];
      put_u32(b, (uint32_t)ex->in_len);
      send_frame(T_STDIN_ACK, ex->id, b, 4);
      ex->in_len = 0;
      close(ex->in_fd);
      ex->in_fd = -1;
      return;
    }
    memmove(ex->in_buf, ex->in_buf + n, ex->in_len - (size_t)n);
    ex->in_len -= (size_t)n;
    unsigned char b[4];
    put_u32(b, (uint32_t)n);
    send_frame(T_STDIN_ACK, ex->id, b, 4);
  }
  if (ex->in_fd >= 0 && ex->in_len == 0 && ex->in_close_pending) {
    close(ex->in_fd);
    ex->in_fd = -1;
  }
}

static void handle_frame(uint8_t type, uint32_t id, const unsigned char *body, size_t len) {
  exec_t *ex;
  switch (type) {
    case T_EXEC:
      start_exec(id, body, len);
      break;
    case T_STDIN:
      ex = find_exec(id);
      if (!ex || ex->in_fd < 0) {
        unsigned char b[4];
        put_u32(b, (uint32_t)len);
        send_frame(T_STDIN_ACK, id, b, 4);
        break;
      }
      if (ex->in_len + len > STDIN_BUF_MAX) { send_log("stdin overrun: engine exceeded its window"); _exit(0); }
      if (!ex->in_buf) ex->in_buf = malloc(STDIN_BUF_MAX);
      if (!ex->in_buf) _exit(0);
      memcpy(ex->in_buf + ex->in_len, body, len);
      ex->in_len += len;
      flush_stdin(ex);
      break;
    case T_STDIN_CLOSE:
      ex = find_exec(id);
      if (ex) { ex->in_close_pending = 1; flush_stdin(ex); }
      break;
    case T_SIGNAL:
      ex = find_exec(id);
      if (ex && ex->pid > 0 && !ex->reaped && len >= 4) {
        int sig = (int)get_u32(body);
        if (sig == SIGINT || sig == SIGTERM || sig == SIGKILL || sig == SIGHUP || sig == SIGQUIT) {
          if (kill(-ex->pid, sig) < 0) kill(ex->pid, sig);
        }
      }
      break;
    default:
      send_log("unknown frame type");
      break;
  }
}

/* Returns 0 at EOF of the control channel. */
static int read_control(void) {
  static unsigned char buf[IO_CHUNK];
  ssize_t n = read(0, buf, sizeof buf);
  if (n < 0) return errno == EINTR || errno == EAGAIN ? 1 : 0;
  if (n == 0) return 0;
  size_t off = 0;
  while (off < (size_t)n) {
    /* Accumulate into in_frame until a whole frame is there. */
    size_t need;
    if (in_frame_len < 4) need = 4 - in_frame_len;
    else {
      uint32_t flen = get_u32(in_frame);
      if (flen < 5 || flen > MAX_FRAME) { send_log("bad frame length"); return 0; }
      need = 4 + flen - in_frame_len;
    }
    size_t take = (size_t)n - off < need ? (size_t)n - off : need;
    memcpy(in_frame + in_frame_len, buf + off, take);
    in_frame_len += take;
    off += take;
    if (in_frame_len >= 4) {
      uint32_t flen = get_u32(in_frame);
      if (flen < 5 || flen > MAX_FRAME) { send_log("bad frame length"); return 0; }
      if (in_frame_len == 4 + flen) {
        handle_frame(in_frame[4], get_u32(in_frame + 5), in_frame + 9, flen - 5);
        in_frame_len = 0;
      }
    }
  }
  return 1;
}

static void pump_output(exec_t *ex, int *fdp, uint8_t type) {
  static unsigned char buf[IO_CHUNK];
  for (int rounds = 0; rounds < 4 && *fdp >= 0; rounds++) {
    ssize_t n = read(*fdp, buf, sizeof buf);
    if (n > 0) { send_frame(type, ex->id, buf, (size_t)n); continue; }
    if (n < 0 && (errno == EINTR)) continue;
    if (n < 0 && errno == EAGAIN) return;
    close(*fdp);
    *fdp = -1;
  }
}

static void maybe_finish(exec_t *ex, long long now) {
  if (!ex->reaped) return;
  int pipes_open = ex->out_fd >= 0 || ex->err_fd >= 0;
  if (pipes_open && now - ex->exit_time_ms < DRAIN_GRACE_MS) return;
  /* Background processes may still hold the pipes; the exec is over once its main process is. */
  if (ex->out_fd >= 0) { pump_output(ex, &ex->out_fd, T_STDOUT); if (ex->out_fd >= 0) close(ex->out_fd); }
  if (ex->err_fd >= 0) { pump_output(ex, &ex->err_fd, T_STDERR); if (ex->err_fd >= 0) close(ex->err_fd); }
  if (ex->in_fd >= 0) close(ex->in_fd);
  free(ex->in_buf);
  unsigned char body[8];
  int code = WIFEXITED(ex->status) ? WEXITSTATUS(ex->status) : -1;
  int sig = WIFSIGNALED(ex->status) ? WTERMSIG(ex->status) : 0;
  put_u32(body, (uint32_t)code);
  put_u32(body + 4, (uint32_t)sig);
  send_frame(T_EXIT, ex->id, body, 8);
  ex->used = 0;
}

static void reap_children(void) {
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    for (int i = 0; i < MAX_EXECS; i++) {
      if (execs[i].used && execs[i].pid == pid && !execs[i].reaped) {
        execs[i].reaped = 1;
        execs[i].status = status;
        execs[i].exit_time_ms = now_ms();
      }
    }
  }
}

/* ---- network bridges: TCP on the sandbox loopback <-> unix socket served by the gateway */

static void setup_bridge(const char *spec) {
  if (n_bridges >= MAX_BRIDGES) { fprintf(stderr, "palisade-sandbox: too many bridges\n"); _exit(125); }
  char *colon = strchr(spec, ':');
  if (!colon) { fprintf(stderr, "palisade-sandbox: bridge must be PORT:PATH\n"); _exit(125); }
  long port = strtol(spec, NULL, 10);
  const char *path = colon + 1;
  if (port < 1 || port > 65535 || strlen(path) >= sizeof bridges[0].path) {
    fprintf(stderr, "palisade-sandbox: invalid bridge %s\n", spec);
    _exit(125);
  }
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) die("bridge socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bridge bind");
  if (listen(fd, 128) < 0) die("bridge listen");
  bridges[n_bridges].listen_fd = fd;
  strcpy(bridges[n_bridges].path, path);
  n_bridges++;
}

static void close_conn(int i) {
  conn_t *c = conns[i];
  if (c->a >= 0) close(c->a);
  if (c->b >= 0) close(c->b);
  free(c);
  conns[i] = NULL;
}

static void accept_bridge(bridge_t *br) {
  for (;;) {
    int a = accept4(br->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (a < 0) return;
    int slot = -1;
    for (int i = 0; i < MAX_CONNS; i++) if (!conns[i]) { slot = i; break; }
    int b = -1;
    if (slot >= 0) {
      b = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      struct sockaddr_un su = {0};
      su.sun_family = AF_UNIX;
      strcpy(su.sun_path, br->path);
      if (b >= 0 && connect(b, (struct sockaddr *)&su, sizeof su) < 0) { close(b); b = -1; }
    }
    if (b < 0) { close(a); continue; } /* gateway unavailable or too many connections: refuse */
    set_nonblock(b);
    conn_t *c = calloc(1, sizeof *c);
    if (!c) { close(a); close(b); continue; }
    c->a = a;
    c->b = b;
    conns[slot] = c;
  }
}

/* Move bytes from -> to through buf; returns -1 when the connection should close. */
static int pump_conn(int from, int to, char *buf, size_t *len, size_t *off, int *from_eof, int *to_wshut) {
  if (*len == 0 && !*from_eof) {
    ssize_t n = read(from, buf, IO_CHUNK);
    if (n > 0) { *len = (size_t)n; *off = 0; }
    else if (n == 0) *from_eof = 1;
    else if (errno != EAGAIN && errno != EINTR) return -1;
  }
  while (*len > 0) {
    ssize_t n = write(to, buf + *off, *len);
    if (n > 0) { *off += (size_t)n; *len -= (size_t)n; continue; }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
    return -1;
  }
  if (*from_eof && *len == 0 && !*to_wshut) { shutdown(to, SHUT_WR); *to_wshut = 1; }
  return 0;
}

static int agent_main(int argc, char **argv) {
  for (int i = 0; i < argc; i++) {
    if (i + 1 >= argc) { fprintf(stderr, "palisade-sandbox: %s needs a value\n", argv[i]); return 125; }
    if (strcmp(argv[i], "--cgroup-fd") == 0) {
      int fd = atoi(argv[++i]);
      if (fd < 3 || n_cgroup_fds >= MAX_CGROUP_FDS || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        fprintf(stderr, "palisade-sandbox: bad cgroup fd %s\n", argv[i]);
        return 125;
      }
      cgroup_fds[n_cgroup_fds++] = fd;
    } else if (strcmp(argv[i], "--bridge") == 0) {
      setup_bridge(argv[++i]);
    } else { fprintf(stderr, "palisade-sandbox: unknown agent option %s\n", argv[i]); return 125; }
  }
  /* Processes of the sandbox share our uid; being non-dumpable keeps them out of our
   * /proc/1/fd (the cgroup directory fds) and /proc/1/mem. */
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) die("dumpable");
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) die("sigprocmask");
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) die("signalfd");
  signal(SIGPIPE, SIG_IGN);
  in_frame = malloc(4 + MAX_FRAME);
  if (!in_frame) die("malloc");
  send_frame(T_READY, 0, NULL, 0);

  struct pollfd pfds[2 + MAX_BRIDGES + 2 * MAX_EXECS + 2 * MAX_CONNS];
  for (;;) {
    int n = 0;
    pfds[n++] = (struct pollfd){0, POLLIN, 0};
    pfds[n++] = (struct pollfd){sfd, POLLIN, 0};
    for (int i = 0; i < n_bridges; i++) pfds[n++] = (struct pollfd){bridges[i].listen_fd, POLLIN, 0};
    int timeout = -1;
    long long now = now_ms();
    for (int i = 0; i < MAX_EXECS; i++) {
      exec_t *ex = &execs[i];
      if (!ex->used) continue;
      if (ex->out_fd >= 0) pfds[n++] = (struct pollfd){ex->out_fd, POLLIN, 0};
      if (ex->err_fd >= 0) pfds[n++] = (struct pollfd){ex->err_fd, POLLIN, 0};
      if (ex->in_fd >= 0 && ex->in_len > 0) pfds[n++] = (struct pollfd){ex->in_fd, POLLOUT, 0};
      if (ex->reaped) {
        long long left = DRAIN_GRACE_MS - (now - ex->exit_time_ms);
        if (left < 0) left = 0;
        if (timeout < 0 || left < timeout) timeout = (int)left;
      }
    }
    for (int i = 0; i < MAX_CONNS; i++) {
      conn_t *c = conns[i];
      if (!c) continue;
      short ea = 0, eb = 0;
      if (c->ab_len == 0 && !c->a_eof) ea |= POLLIN;
      if (c->ba_len > 0) ea |= POLLOUT;
      if (c->ba_len == 0 && !c->b_eof) eb |= POLLIN;
      if (c->ab_len > 0) eb |= POLLOUT;
      pfds[n++] = (struct pollfd){c->a, ea, 0};
      pfds[n++] = (struct pollfd){c->b, eb, 0};
    }
    int r = poll(pfds, (nfds_t)n, timeout);
    if (r < 0 && errno != EINTR) die("poll");
    if (pfds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      if (!read_control()) _exit(0);
    }
    if (pfds[1].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) == sizeof si) {}
    }
    reap_children();
    for (int i = 0; i < n_bridges; i++) accept_bridge(&bridges[i]);
    now = now_ms();
    for (int i = 0; i < MAX_EXECS; i++) {
      exec_t *ex = &execs[i];
      if (!ex->used) continue;
      if (ex->out_fd >= 0) pump_output(ex, &ex->out_fd, T_STDOUT);
      if (ex->err_fd >= 0) pump_output(ex, &ex->err_fd, T_STDERR);
      if (ex->in_len > 0) flush_stdin(ex);
      maybe_finish(ex, now);
    }
    for (int i = 0; i < MAX_CONNS; i++) {
      conn_t *c = conns[i];
      if (!c) continue;
      if (pump_conn(c->a, c->b, c->ab, &c->ab_len, &c->ab_off, &c->a_eof, &c->b_wshut) < 0 ||
          pump_conn(c->b, c->a, c->ba, &c->ba_len, &c->ba_off, &c->b_eof, &c->a_wshut) < 0 ||
          (c->a_eof && c->b_eof && c->ab_len == 0 && c->ba_len == 0)) {
        close_conn(i);
      }
    }
  }
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "launch") == 0) return launch_main(argc - 2, argv + 2);
  if (argc >= 2 && strcmp(argv[1], "agent") == 0) return agent_main(argc - 2, argv + 2);
  fprintf(stderr, "usage: palisade-sandbox launch|agent ...\n");
  return 125;
}
