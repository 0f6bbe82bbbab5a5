/* sysroot.h - every file the host tools read or write, under a root directory (--sysroot), so that tests
 * run on fixture trees. Paths given to these functions are absolute host paths ("/sys/bus/pci/..."). */
#ifndef TITAN_HOST_SYSROOT_H
#define TITAN_HOST_SYSROOT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct {
    char root[4096]; /* "" for the real root "/" */
} titan_sysroot;

/* Sets up `sr` for `dir` (NULL or "" or "/": the real root). Returns 0 or -EINVAL (not a directory,
 * or too long). */
int titan_sysroot_init(titan_sysroot *sr, const char *dir);

/* Writes root + path into out[cap]. Returns 0 or -ENAMETOOLONG. `path` must start with '/'. */
int titan_sysroot_path(const titan_sysroot *sr, const char *path, char *out, size_t cap);

/* Reads at most cap-1 bytes of the file into buf (NUL-terminated; one trailing newline removed when
 * `trim`). Returns the length or -errno. */
ssize_t titan_sysroot_read(const titan_sysroot *sr, const char *path, char *buf, size_t cap, bool trim);

/* Reads a whole file (at most max bytes) into a malloc'd NUL-terminated buffer. Returns 0 and *out
 * (and *len when not NULL), or -errno (-EFBIG when larger). */
int titan_sysroot_slurp(const titan_sysroot *sr, const char *path, size_t max, char **out, size_t *len);

/* Writes `len` bytes to the file (created with `mode` if missing, truncated otherwise). Returns 0 or
 * -errno. For sysfs attributes (bind, driver_override...) use titan_sysroot_write_attr. */
int titan_sysroot_write(const titan_sysroot *sr, const char *path, const char *data, size_t len, mode_t mode);

/* Writes `value` to a sysfs attribute in one write(2) without O_CREAT/O_TRUNC semantics that sysfs
 * rejects; under a fixture root the attribute file must exist (it is overwritten). Returns 0 or -errno. */
int titan_sysroot_write_attr(const titan_sysroot *sr, const char *path, const char *value);

/* The last component of the target of the symlink `path` (e.g. the driver name of
 * /sys/bus/pci/devices/ADDR/driver; a link to an ancestor such as "../.." is named by where it leads) into
 * out[cap]. Returns 0, -ENOENT when there is no link, or -errno. */
int titan_sysroot_link_name(const titan_sysroot *sr, const char *path, char *out, size_t cap);

/* True when `path` exists (stat follows links). */
bool titan_sysroot_exists(const titan_sysroot *sr, const char *path);

/* Lists the entries of directory `path` (without . and ..), sorted, into a malloc'd array of malloc'd
 * strings (*names, *n). Returns 0 or -errno. Free with titan_sysroot_free_list. */
int titan_sysroot_list(const titan_sysroot *sr, const char *path, char ***names, size_t *n);
void titan_sysroot_free_list(char **names, size_t n);

/* Creates directory `path` and its missing parents with `mode` (mkdir -p). Returns 0 or -errno (-ENOTDIR
 * when a component is not a directory). */
int titan_sysroot_mkdirs(const titan_sysroot *sr, const char *path, mode_t mode);

/* Replaces the file's content with `len` bytes atomically: a temporary file in the same directory, fsync,
 * then rename(2). An existing file keeps its mode; a new one gets `mode`. A symlink is written through in
 * place (its target keeps the link). Returns 0 or -errno. */
int titan_sysroot_replace(const titan_sysroot *sr, const char *path, const char *data, size_t len,
                          mode_t mode);

#endif
