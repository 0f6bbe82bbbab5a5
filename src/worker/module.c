/* module.c - loads titan-worker's optional modules (see module.h). */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "module.h"

void *titan_module_open(const char *file, char *err, size_t errcap)
{
    char self[4096], path[4200];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) *slash = '\0';
        snprintf(path, sizeof(path), "%s/%s", self, file);
        /* Present here but unloadable (a library it needs is missing): say so, rather than the
         * install directory's "no such file". */
        if (access(path, F_OK) == 0) {
            void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            if (!h) snprintf(err, errcap, "cannot load %.300s: %.300s", path, dlerror());
            return h;
        }
    }
    snprintf(path, sizeof(path), "%s/%s", TITAN_RUNNER_LIBDIR, file);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) snprintf(err, errcap, "cannot load %.300s: %.300s", path, dlerror());
    return h;
}
