/* sysroot.c - host file access under --sysroot (see sysroot.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sysroot.h"

int titan_sysroot_init(titan_sysroot *sr, const char *dir)
{
    sr->root[0] = '\0';
    if (!dir || !*dir || strcmp(dir, "/") == 0) return 0;
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    if (n >= sizeof(sr->root) - 256) return -EINVAL;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return -EINVAL;
    memcpy(sr->root, dir, n);
    sr->root[n] = '\0';
    return 0;
}

int titan_sysroot_path(const titan_sysroot *sr, const char *path, char *out, size_t cap)
{
    if (!path || path[0] != '/') return -EINVAL;
    int n = snprintf(out, cap, "%s%s", sr->root, path);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

ssize_t titan_sysroot_read(const titan_sysroot *sr, const char *path, char *buf, size_t cap, bool trim)
{
    char p[PATH_MAX];
    int rc = titan_sysroot_path(sr, path, p, sizeof(p));
    if (rc) return rc;
    if (cap == 0) return -EINVAL;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    size_t got = 0;
    while (got + 1 < cap) {
        ssize_t r = read(fd, buf + got, cap - 1 - got);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            return -e;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    if (trim && got > 0 && buf[got - 1] == '\n') buf[--got] = '\0';
    return (ssize_t)got;
}

int titan_sysroot_slurp(const titan_sysroot *sr, const char *path, size_t max, char **out, size_t *len)
{
    char p[PATH_MAX];
    int rc = titan_sysroot_path(sr, path, p, sizeof(p));
    if (rc) return rc;
    FILE *f = fopen(p, "rbe");
    if (!f) return -errno;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            if (cap > max) break;
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - 1 - n, f);
        n += r;
        if (r == 0) break;
    }
    bool err = ferror(f);
    fclose(f);
    if (!buf) return -ENOMEM;
    if (err) {
        free(buf);
        return -EIO;
    }
    if (n > max) {
        free(buf);
        return -EFBIG;
    }
    buf[n] = '\0';
    *out = buf;
    if (len) *len = n;
    return 0;
}

int titan_sysroot_write(const titan_sysroot *sr, const char *path, const char *data, size_t len, mode_t mode)
{
    char p[PATH_MAX];
    int rc = titan_sysroot_path(sr, path, p, sizeof(p));
    if (rc) return rc;
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return -errno;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, data + done, len - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            return -e;
        }
        done += (size_t)w;
    }
    if (close(fd) != 0) return -errno;
    return 0;
}

int titan_sysroot_write_attr(const titan_sysroot *sr, const char *path, const char *value)
{
    char p[PATH_MAX];
    int rc = titan_sysroot_path(sr, path, p, sizeof(p));
    if (rc) return rc;
    /* sysfs attributes exist already; a fixture's are plain files, truncated so they read back. */
    int fd = open(p, O_WRONLY | O_CLOEXEC | (sr->root[0] ? O_TRUNC : 0));
    if (fd < 0) return -errno;
    size_t len = strlen(value);
    ssize_t w = write(fd, value, len);
    int e = w < 0 ? errno : 0;
    if (close(fd) != 0 && !e) e = errno;
    if (e) return -e;
    return (size_t)w == len ? 0 : -EIO;
}

int titan_sysroot_link_name(const titan_sysroot *sr, const char *path, char *out, size_t cap)
{
    char p[PATH_MAX], target[PATH_MAX];
    int rc = titan_sysroot_path(sr, path, p, sizeof(p));
    if (rc) return rc;
    ssize_t n = readlink(p, target, sizeof(target) - 1);
    if (n < 0) return errno == EINVAL ? -ENOENT : -errno;
    target[n] = '\0';
    const char *base = strrchr(target, '/');
    base = base ? base + 1 : target;
    if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
        /* A link to an ancestor ("../.."): name it by where it leads. */
        char real[PATH_MAX];
        if (!realpath(p, real)) return -errno;
        memcpy(target, real, strlen(real) + 1);
        base = strrchr(target, '/');
        base = base ? base + 1 : target;
    }
    if (strlen(base) >= cap) return -ENAMETOOLONG;
    memcpy(out, base, strlen(base) + 1);
    return 0;
}

bool titan_sysroot_exists(const titan_sysroot *sr, const char *path)
{
    char p[PATH_MAX];
    struct stat st;
    return titan_sysroot_path(sr, path, p, sizeof(p)) == 0 && stat(p, &st) == 0;
}

static int s_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int titan_sysroot_list(const titan_sysroot *sr, const char *path, char ***names, size_t *n)
{
    char p[PATH_MAX];
    int rc = titan_sysroot_path(sr, path, p, sizeof(p));
    if (rc) return rc;
    DIR *d = opendir(p);
    if (!d) return -errno;
    size_t cap = 16, cnt = 0;
    char **v = malloc(cap * sizeof(*v));
    struct dirent *e = NULL;
    while (v && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (cnt == cap) {
            char **nv = realloc(v, cap * 2 * sizeof(*v));
            if (!nv) break;
            v = nv;
            cap *= 2;
        }
        if (!(v[cnt] = strdup(e->d_name))) break;
        cnt++;
    }
    bool failed = !v || e != NULL;
    closedir(d);
    if (failed) {
        if (v) titan_sysroot_free_list(v, cnt);
        return -ENOMEM;
    }
    qsort(v, cnt, sizeof(*v), s_cmp);
    *names = v;
    *n = cnt;
    return 0;
}

void titan_sysroot_free_list(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

int titan_sysroot_mkdirs(const titan_sysroot *sr, const char *path, mode_t mode)
{
    char p[PATH_MAX];
    int rc = titan_sysroot_path(sr, path, p, sizeof(p));
    if (rc) return rc;
    /* Walk the host path's components only: the sysroot itself must exist already. */
    size_t skip = strlen(sr->root);
    for (char *s = p + skip + 1;; s++) {
        if (*s != '/' && *s != '\0') continue;
        char c = *s;
        *s = '\0';
        struct stat st;
        if (stat(p, &st) == 0) {
            if (!S_ISDIR(st.st_mode)) return -ENOTDIR;
        } else if (errno != ENOENT || (mkdir(p, mode) != 0 && errno != EEXIST)) {
            return -errno;
        }
        *s = c;
        if (c == '\0') break;
    }
    return 0;
}

int titan_sysroot_replace(const titan_sysroot *sr, const char *path, const char *data, size_t len,
                          mode_t mode)
{
    char p[PATH_MAX], tmp[PATH_MAX];
    int rc = titan_sysroot_path(sr, path, p, sizeof(p));
    if (rc) return rc;
    struct stat st;
    if (lstat(p, &st) == 0) {
        if (S_ISLNK(st.st_mode)) return titan_sysroot_write(sr, path, data, len, mode);
        mode = st.st_mode & 07777;
    } else if (errno != ENOENT) {
        return -errno;
    }
    /* ".NAME.titan-XXXXXX" in the same directory: rename(2) stays on one file system, and the name matches
     * none of the *.conf globs that modprobe, dracut or systemd-boot read meanwhile. */
    const char *slash = strrchr(p, '/');
    int n = snprintf(tmp, sizeof(tmp), "%.*s/.%s.titan-XXXXXX", (int)(slash - p), p, slash + 1);
    if (n < 0 || (size_t)n >= sizeof(tmp)) return -ENAMETOOLONG;
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) return -errno;
    int e = fchmod(fd, mode) != 0 ? errno : 0;
    for (size_t done = 0; !e && done < len;) {
        ssize_t w = write(fd, data + done, len - done);
        if (w < 0 && errno != EINTR) e = errno;
        if (w > 0) done += (size_t)w;
    }
    if (!e && fsync(fd) != 0) e = errno;
    if (close(fd) != 0 && !e) e = errno;
    if (!e && rename(tmp, p) != 0) e = errno;
    if (e) unlink(tmp);
    return -e;
}
