/*
 * palisade-quota: set and read a Linux project quota (ext4/XFS with prjquota).
 *
 *   palisade-quota set <dir> <blockdev> <projid> <bytes> <inodes>
 *       Gives <dir> project id <projid> with the project-inherit flag (so everything created
 *       below it is charged to the project), then sets the project's hard limits.
 *   palisade-quota get <blockdev> <projid>
 *       Prints {"usedBytes":N,"limitBytes":N,"usedInodes":N,"limitInodes":N}.
 *
 * Exit status 0 on success; 2 for bad usage; 3 when the filesystem or kernel cannot do
 * project quotas (the caller turns that into REQUIREMENT_MISSING); 1 for other failures.
 * Only open/ioctl/quotactl on the paths given; the directory is opened with O_NOFOLLOW so a
 * symlink planted in its place is refused rather than followed.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/quota.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PRJQUOTA
#define PRJQUOTA 2
#endif

enum { EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_UNSUPPORTED = 3 };

static int usage(void) {
  fputs("usage: palisade-quota set <dir> <blockdev> <projid> <bytes> <inodes>\n"
        "       palisade-quota get <blockdev> <projid>\n",
        stderr);
  return EXIT_USAGE;
}

/* Strict unsigned decimal parse: digits only, no sign, no overflow. */
static int parse_u64(const char *text, uint64_t max, uint64_t *out) {
  if (text == NULL || *text == '\0' || strlen(text) > 20) return -1;
  uint64_t value = 0;
  for (const char *p = text; *p != '\0'; p++) {
    if (*p < '0' || *p > '9') return -1;
    uint64_t digit = (uint64_t)(*p - '0');
    if (value > (UINT64_MAX - digit) / 10) return -1;
    value = value * 10 + digit;
  }
  if (value > max) return -1;
  *out = value;
  return 0;
}

/* Errors that mean "this filesystem/kernel has no project quota", not "something broke". */
static int unsupported_errno(int err) {
  return err == ESRCH || err == ENOSYS || err == ENOTSUP || err == EOPNOTSUPP || err == ENOTTY ||
         err == EINVAL;
}

static int fail(const char *what, const char *path, int err) {
  fprintf(stderr, "palisade-quota: %s %s: %s", what, path, strerror(err));
  if (err == ESRCH) fputs(" (project quota is not enabled on this filesystem: mount it with prjquota)", stderr);
  if (err == ENOSYS) fputs(" (kernel built without quota support: CONFIG_QUOTA and CONFIG_QFMT_V2)", stderr);
  if (err == EPERM) fputs(" (needs root / CAP_SYS_ADMIN)", stderr);
  fputc('\n', stderr);
  return unsupported_errno(err) ? EXIT_UNSUPPORTED : EXIT_FAIL;
}

static int cmd_set(const char *dir, const char *blockdev, uint32_t projid, uint64_t bytes, uint64_t inodes) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return fail("cannot open directory", dir, errno);

  struct fsxattr attr;
  memset(&attr, 0, sizeof attr);
  if (ioctl(fd, FS_IOC_FSGETXATTR, &attr) != 0) {
    int err = errno;
    close(fd);
    return fail("cannot read project attributes of", dir, err);
  }
  attr.fsx_projid = projid;
  attr.fsx_xflags |= FS_XFLAG_PROJINHERIT;
  if (ioctl(fd, FS_IOC_FSSETXATTR, &attr) != 0) {
    int err = errno;
    close(fd);
    return fail("cannot set project id on", dir, err);
  }
  close(fd);

  struct if_dqblk limits;
  memset(&limits, 0, sizeof limits);
  /* dqb_bhardlimit is in 1 KiB quota blocks; round up so the limit is never below the request. */
  limits.dqb_bhardlimit = (bytes + 1023) / 1024;
  limits.dqb_bsoftlimit = 0;
  limits.dqb_ihardlimit = inodes;
  limits.dqb_isoftlimit = 0;
  limits.dqb_valid = QIF_BLIMITS | QIF_ILIMITS;
  if (quotactl(QCMD(Q_SETQUOTA, PRJQUOTA), blockdev, (int)projid, (caddr_t)&limits) != 0) {
    return fail("cannot set project quota on", blockdev, errno);
  }
  return 0;
}

static int cmd_get(const char *blockdev, uint32_t projid) {
  struct if_dqblk quota;
  memset(&quota, 0, sizeof quota);
  if (quotactl(QCMD(Q_GETQUOTA, PRJQUOTA), blockdev, (int)projid, (caddr_t)&quota) != 0) {
    return fail("cannot read project quota on", blockdev, errno);
  }
  printf("{\"usedBytes\":%" PRIu64 ",\"limitBytes\":%" PRIu64 ",\"usedInodes\":%" PRIu64
         ",\"limitInodes\":%" PRIu64 "}\n",
         (uint64_t)quota.dqb_curspace, (uint64_t)quota.dqb_bhardlimit * 1024,
         (uint64_t)quota.dqb_curinodes, (uint64_t)quota.dqb_ihardlimit);
  return fflush(stdout) == 0 ? 0 : EXIT_FAIL;
}

int main(int argc, char **argv) {
  uint64_t projid = 0;
  /* Project id 0 is the default project of every file: limiting it would limit the whole fs. */
  if (argc == 7 && strcmp(argv[1], "set") == 0) {
    uint64_t bytes = 0;
    uint64_t inodes = 0;
    if (parse_u64(argv[4], UINT32_MAX - 1, &projid) != 0 || projid == 0) {
      fputs("palisade-quota: projid must be an integer in 1..4294967294\n", stderr);
      return EXIT_USAGE;
    }
    if (parse_u64(argv[5], UINT64_MAX - 1024, &bytes) != 0 || bytes == 0) {
      fputs("palisade-quota: bytes must be a positive integer\n", stderr);
      return EXIT_USAGE;
    }
    if (parse_u64(argv[6], UINT64_MAX, &inodes) != 0 || inodes == 0) {
      fputs("palisade-quota: inodes must be a positive integer\n", stderr);
      return EXIT_USAGE;
    }
    return cmd_set(argv[2], argv[3], (uint32_t)projid, bytes, inodes);
  }
  if (argc == 4 && strcmp(argv[1], "get") == 0) {
    if (parse_u64(argv[3], UINT32_MAX - 1, &projid) != 0) {
      fputs("palisade-quota: projid must be an integer in 0..4294967294\n", stderr);
      return EXIT_USAGE;
    }
    return cmd_get(argv[2], (uint32_t)projid);
  }
  return usage();
}
