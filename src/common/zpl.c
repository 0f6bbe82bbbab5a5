/* zpl.c - bounded, leak-free loading of CZMQ certificate files. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zpl.h"

zconfig_t *titan_zpl_load(const char *path)
{
    zconfig_t *root = NULL;
    char *buf = NULL;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > TITAN_ZPL_MAX_BYTES) goto out;
    buf = malloc(TITAN_ZPL_MAX_BYTES + 2);
    if (!buf) goto out;
    size_t len = 0;
    for (;;) {
        ssize_t got = read(fd, buf + len, TITAN_ZPL_MAX_BYTES + 1 - len);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) goto out;
        if (got == 0) break;
        len += (size_t)got;
        if (len > TITAN_ZPL_MAX_BYTES) goto out; /* grew since fstat */
    }
    buf[len] = '\0';
    if (memchr(buf, '\0', len) == NULL) root = zconfig_str_load(buf);
out:
    free(buf);
    close(fd);
    return root;
}
