/* module.c - loads the optional modules (the CUDA backend, the TorchScript runner; see module.h). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "module.h"

/* Tries dir/file; 1 when it is there (*h set, or err when it would not load), 0 when it is not. */
static int s_try(const char *dir, const char *file, void **h, char *err, size_t errcap)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    if (access(path, F_OK) != 0) return 0;
    /* Present here but unloadable (a library it needs is missing): say so, rather than the install
     * directory's "no such file". */
    *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!*h) snprintf(err, errcap, "cannot load %.300s: %.300s", path, dlerror());
    return 1;
}

/* The directory of the file that holds `addr`'s code: libtitan.so for a program that uses the library,
 * the program itself where the core is linked in statically. */
static int s_dir_of(const void *addr, char *dir, size_t cap)
{
    Dl_info di;
    if (!dladdr(addr, &di) || !di.dli_fname || !strchr(di.dli_fname, '/')) return -1;
    char real[4096];
    if (!realpath(di.dli_fname, real)) return -1;
    char *slash = strrchr(real, '/');
    *slash = '\0';
    snprintf(dir, cap, "%s", real);
    return 0;
}

void *titan_module_open(const char *file, char *err, size_t errcap)
{
    char dir[4096];
    void *h = NULL;
    if (s_dir_of((const void *)titan_module_open, dir, sizeof(dir)) == 0 && s_try(dir, file, &h, err, errcap))
        return h;
    ssize_t n = readlink("/proc/self/exe", dir, sizeof(dir) - 1);
    if (n > 0) {
        dir[n] = '\0';
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        if (s_try(dir, file, &h, err, errcap)) return h;
    }
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", TITAN_RUNNER_LIBDIR, file);
    h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) snprintf(err, errcap, "cannot load %.300s: %.300s", path, dlerror());
    return h;
}
