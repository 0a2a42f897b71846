/*
 * keyshim: keeps the admin key out of tritonserver's command line (docs/security.md, "How the key reaches Triton").
 *
 * tritonserver takes the key of its restricted APIs only as an argument (--http-restricted-api=...:<header>=<key>),
 * and /proc/<pid>/cmdline is readable by every local user. `ruthctl serve` therefore puts a placeholder in argv,
 * writes the real key into a pipe, and starts tritonserver with this library in LD_PRELOAD and the pipe's read end
 * named by RUTH_KEY_FD. Before main() runs, glibc calls this constructor with argc/argv/envp; it reads the key,
 * closes the pipe and points every argv entry holding the placeholder at a private copy with the key in its place.
 * The argv *strings* (what /proc/<pid>/cmdline shows) still hold the placeholder; only the pointers main() reads
 * change. If a placeholder is present but no key can be read, the process exits 2 before main(): the placeholder
 * never becomes the key. (`ruthctl serve` also checks after start that the placeholder is refused.)
 *
 * The same library keeps what the server and its stubs create owner-only: boost::interprocess (the Python backend's
 * shared-memory regions in /dev/shm) creates with 0644 and then fchmod()s the mode, ignoring the umask that
 * `ruthctl serve` sets to 077; fchmod() below drops the group and other bits. Stubs inherit LD_PRELOAD.
 *
 * Built by ruthctl/keyshim.py with the machine's C compiler into the 0700 state dir, or in an image's build stage.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RUTH_KEY_PLACEHOLDER "@RUTH-ADMIN-KEY@"
#define RUTH_KEY_MAX 512

typedef int (*ruth_fchmod_fn)(int, mode_t);

int fchmod(int fd, mode_t mode) {
    static ruth_fchmod_fn real = NULL;
    if (real == NULL) {
        real = (ruth_fchmod_fn)dlsym(RTLD_NEXT, "fchmod");
        if (real == NULL) {
            errno = ENOSYS;
            return -1;
        }
    }
    return real(fd, mode & ~(mode_t)077);
}

static void ruth_die(const char *why) {
    static const char prefix[] = "keyshim: ";
    (void)!write(2, prefix, sizeof(prefix) - 1);
    (void)!write(2, why, strlen(why));
    (void)!write(2, "\n", 1);
    _exit(2);
}

static int ruth_has_placeholder(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        if (argv[i] != NULL && strstr(argv[i], RUTH_KEY_PLACEHOLDER) != NULL) {
            return 1;
        }
    }
    return 0;
}

__attribute__((constructor)) static void ruth_keyshim(int argc, char **argv, char **envp) {
    (void)envp;
    const char *fd_text = getenv("RUTH_KEY_FD");
    if (fd_text == NULL) {
        if (ruth_has_placeholder(argc, argv)) {
            ruth_die("argv holds the key placeholder but RUTH_KEY_FD is not set");
        }
        return;  /* a child of the server (a backend stub) inheriting LD_PRELOAD: nothing to do */
    }
    char *end = NULL;
    long fd = strtol(fd_text, &end, 10);
    if (end == fd_text || *end != '\0' || fd < 3 || fd > 65535) {
        ruth_die("RUTH_KEY_FD is not a file descriptor number");
    }
    char key[RUTH_KEY_MAX + 1];
    size_t used = 0;
    for (;;) {
        ssize_t got = read((int)fd, key + used, RUTH_KEY_MAX - used);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got < 0) {
            ruth_die("cannot read the key from RUTH_KEY_FD");
        }
        if (got == 0) {
            break;
        }
        used += (size_t)got;
        if (used == RUTH_KEY_MAX) {
            ruth_die("key longer than 512 bytes");
        }
    }
    close((int)fd);
    unsetenv("RUTH_KEY_FD");
    key[used] = '\0';
    if (used == 0 || memchr(key, '\0', used) != NULL || strpbrk(key, "\n\r") != NULL) {
        ruth_die("empty or malformed key on RUTH_KEY_FD");
    }
    size_t hole = strlen(RUTH_KEY_PLACEHOLDER);
    for (int i = 0; i < argc; i++) {
        char *at = argv[i] == NULL ? NULL : strstr(argv[i], RUTH_KEY_PLACEHOLDER);
        if (at == NULL) {
            continue;
        }
        size_t before = (size_t)(at - argv[i]);
        size_t after = strlen(at + hole);
        char *copy = malloc(before + used + after + 1);
        if (copy == NULL) {
            ruth_die("out of memory");
        }
        memcpy(copy, argv[i], before);
        memcpy(copy + before, key, used);
        memcpy(copy + before + used, at + hole, after + 1);
        if (strstr(copy, RUTH_KEY_PLACEHOLDER) != NULL) {
            ruth_die("more than one placeholder in one argument");
        }
        argv[i] = copy;  /* the string in the argv area, which /proc/<pid>/cmdline shows, keeps the placeholder */
    }
    memset(key, 0, sizeof(key));
}
