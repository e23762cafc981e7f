/*
 * palisade-fscrypt: per-workspace fscrypt (v2 policy) keys for engine-managed workspaces.
 *
 *   palisade-fscrypt setup <dir>       new random 64-byte key -> the filesystem's keyring,
 *                                      v2 policy (AES-256-XTS / AES-256-CTS) on the empty <dir>
 *   palisade-fscrypt status <dir>      JSON: is <dir> encrypted, with which key, is the key present
 *   palisade-fscrypt remove-key <dir>  removes <dir>'s key from its filesystem (all users)
 *
 * Exit status: 0 ok, 2 usage, 3 the kernel or filesystem cannot do fscrypt, 1 any other error.
 *
 * The key is generated here (getrandom) rather than passed in: it never exists in the engine's
 * (garbage-collected, unwipeable) heap, never in argv, a pipe or a file. It lives in one locked
 * page of this short-lived process and is wiped as soon as the kernel has its copy.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fscrypt.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <unistd.h>

#define EXIT_USAGE 2
#define EXIT_UNSUPPORTED 3
#define KEY_BYTES 64

static int open_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) fprintf(stderr, "palisade-fscrypt: cannot open %s: %s\n", path, strerror(errno));
    return fd;
}

static int unsupported_errno(int err) {
    return err == EOPNOTSUPP || err == ENOTTY || err == ENOSYS;
}

static int fail(const char *what, int err) {
    fprintf(stderr, "palisade-fscrypt: %s: %s\n", what, strerror(err));
    return unsupported_errno(err) ? EXIT_UNSUPPORTED : 1;
}

static void print_hex(const uint8_t *bytes, size_t n) {
    for (size_t i = 0; i < n; i++) printf("%02x", bytes[i]);
}

/* Returns 1 and fills *policy if dir has a v2 policy, 0 if it is not encrypted, -1 on error. */
static int read_policy(int fd, struct fscrypt_policy_v2 *policy, int *err) {
    struct fscrypt_get_policy_ex_arg arg;
    memset(&arg, 0, sizeof(arg));
    arg.policy_size = sizeof(arg.policy);
    if (ioctl(fd, FS_IOC_GET_ENCRYPTION_POLICY_EX, &arg) != 0) {
        /* No policy, or a filesystem that cannot have one: either way, not encrypted. */
        if (errno == ENODATA || unsupported_errno(errno)) return 0;
        *err = errno;
        return -1;
    }
    if (arg.policy.version != FSCRYPT_POLICY_V2) {
        *err = EINVAL;
        return -1;
    }
    *policy = arg.policy.v2;
    return 1;
}

static int cmd_setup(const char *path) {
    int fd = open_dir(path);
    if (fd < 0) return 1;
    /* The key must not reach swap or a core dump. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    static struct {
        struct fscrypt_add_key_arg arg;
        uint8_t raw[KEY_BYTES];
    } request __attribute__((aligned(4096)));
    if (mlock(&request, sizeof(request)) != 0) {
        int err = errno;
        close(fd);
        return fail("cannot lock the key in memory", err);
    }
    memset(&request, 0, sizeof(request));
    request.arg.key_spec.type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
    request.arg.raw_size = KEY_BYTES;
    size_t got = 0;
    while (got < KEY_BYTES) {
        ssize_t n = getrandom(request.arg.raw + got, KEY_BYTES - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int err = errno;
            explicit_bzero(&request, sizeof(request));
            close(fd);
            return fail("getrandom", err);
        }
        got += (size_t)n;
    }
    int added = ioctl(fd, FS_IOC_ADD_ENCRYPTION_KEY, &request.arg);
    int add_err = errno;
    uint8_t identifier[FSCRYPT_KEY_IDENTIFIER_SIZE];
    memcpy(identifier, request.arg.key_spec.u.identifier, sizeof(identifier));
    explicit_bzero(&request, sizeof(request));
    munlock(&request, sizeof(request));
    if (added != 0) {
        close(fd);
        return fail("FS_IOC_ADD_ENCRYPTION_KEY (is the filesystem formatted with -O encrypt?)", add_err);
    }

    struct fscrypt_policy_v2 policy;
    memset(&policy, 0, sizeof(policy));
    policy.version = FSCRYPT_POLICY_V2;
    policy.contents_encryption_mode = FSCRYPT_MODE_AES_256_XTS;
    policy.filenames_encryption_mode = FSCRYPT_MODE_AES_256_CTS;
    policy.flags = FSCRYPT_POLICY_FLAGS_PAD_32;
    memcpy(policy.master_key_identifier, identifier, sizeof(identifier));
    if (ioctl(fd, FS_IOC_SET_ENCRYPTION_POLICY, &policy) != 0) {
        int err = errno;
        /* Do not leave an unused key behind in the filesystem's keyring. */
        struct fscrypt_remove_key_arg rm;
        memset(&rm, 0, sizeof(rm));
        rm.key_spec.type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
        memcpy(rm.key_spec.u.identifier, identifier, sizeof(identifier));
        ioctl(fd, FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS, &rm);
        close(fd);
        return fail(err == ENOTEMPTY ? "FS_IOC_SET_ENCRYPTION_POLICY (directory is not empty)"
                                     : "FS_IOC_SET_ENCRYPTION_POLICY",
                    err);
    }
    close(fd);
    printf("{\"identifier\":\"");
    print_hex(identifier, sizeof(identifier));
    printf("\"}\n");
    return 0;
}

static const char *mode_name(uint8_t mode) {
    switch (mode) {
    case FSCRYPT_MODE_AES_256_XTS: return "AES-256-XTS";
    case FSCRYPT_MODE_AES_256_CTS: return "AES-256-CTS";
    case FSCRYPT_MODE_AES_128_CBC: return "AES-128-CBC";
    case FSCRYPT_MODE_AES_128_CTS: return "AES-128-CTS";
    case FSCRYPT_MODE_ADIANTUM: return "Adiantum";
    default: return "other";
    }
}

static int cmd_status(const char *path) {
    int fd = open_dir(path);
    if (fd < 0) return 1;
    struct fscrypt_policy_v2 policy;
    int err = 0;
    int has = read_policy(fd, &policy, &err);
    if (has < 0) {
        close(fd);
        return fail("FS_IOC_GET_ENCRYPTION_POLICY_EX", err);
    }
    if (has == 0) {
        close(fd);
        printf("{\"encrypted\":false}\n");
        return 0;
    }
    struct fscrypt_get_key_status_arg status;
    memset(&status, 0, sizeof(status));
    status.key_spec.type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
    memcpy(status.key_spec.u.identifier, policy.master_key_identifier,
           FSCRYPT_KEY_IDENTIFIER_SIZE);
    if (ioctl(fd, FS_IOC_GET_ENCRYPTION_KEY_STATUS, &status) != 0) {
        err = errno;
        close(fd);
        return fail("FS_IOC_GET_ENCRYPTION_KEY_STATUS", err);
    }
    close(fd);
    const char *key = status.status == FSCRYPT_KEY_STATUS_PRESENT ? "present"
                      : status.status == FSCRYPT_KEY_STATUS_INCOMPLETELY_REMOVED
                          ? "incompletely-removed"
                          : "absent";
    printf("{\"encrypted\":true,\"version\":2,\"contents\":\"%s\",\"filenames\":\"%s\","
           "\"identifier\":\"",
           mode_name(policy.contents_encryption_mode), mode_name(policy.filenames_encryption_mode));
    print_hex(policy.master_key_identifier, FSCRYPT_KEY_IDENTIFIER_SIZE);
    printf("\",\"keyStatus\":\"%s\"}\n", key);
    return 0;
}

static int cmd_remove_key(const char *path) {
    int fd = open_dir(path);
    if (fd < 0) return 1;
    struct fscrypt_policy_v2 policy;
    int err = 0;
    int has = read_policy(fd, &policy, &err);
    if (has < 0) {
        close(fd);
        return fail("FS_IOC_GET_ENCRYPTION_POLICY_EX", err);
    }
    if (has == 0) {
        close(fd);
        printf("{\"removed\":false,\"encrypted\":false}\n");
        return 0;
    }
    /*
     * Our own open descriptor of the encrypted directory would keep it "in use" and the key
     * only incompletely removed, so the ioctl goes to the parent: fscrypt never encrypts a
     * filesystem's root, so the parent is on the same filesystem.
     */
    int parent = openat(fd, "..", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    err = errno;
    close(fd);
    if (parent < 0) return fail("cannot open the parent directory", err);
    struct fscrypt_remove_key_arg arg;
    memset(&arg, 0, sizeof(arg));
    arg.key_spec.type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
    memcpy(arg.key_spec.u.identifier, policy.master_key_identifier, FSCRYPT_KEY_IDENTIFIER_SIZE);
    /* ALL_USERS: the engine (root) added it; remove every claim, not only root's. */
    if (ioctl(parent, FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS, &arg) != 0) {
        err = errno;
        close(parent);
        if (err == ENOKEY) {
            printf("{\"removed\":false,\"encrypted\":true}\n");
            return 0;
        }
        return fail("FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS", err);
    }
    close(parent);
    printf("{\"removed\":true,\"encrypted\":true,\"filesBusy\":%s}\n",
           (arg.removal_status_flags & FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY) ? "true"
                                                                                   : "false");
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "setup") == 0) return cmd_setup(argv[2]);
    if (argc == 3 && strcmp(argv[1], "status") == 0) return cmd_status(argv[2]);
    if (argc == 3 && strcmp(argv[1], "remove-key") == 0) return cmd_remove_key(argv[2]);
    fprintf(stderr, "usage: palisade-fscrypt setup|status|remove-key <dir>\n");
    return EXIT_USAGE;
}
