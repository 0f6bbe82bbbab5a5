/* module.h - finds and loads the optional modules (the TorchScript runner, the CUDA backend), for
 * titan-worker and for programs that compute in-process through libtitan. */
#ifndef TITAN_CORE_MODULE_H
#define TITAN_CORE_MODULE_H

#include <stddef.h>

/* dlopens `file`: beside the file that holds this code (libtitan.so, or the program that links the core
 * statically), else beside this executable (the build tree), else in TITAN_RUNNER_LIBDIR (LIBDIR/titan). Returns the handle, or NULL with the path tried and
 * dlerror's reason in err. The module stays loaded until exit. */
void *titan_module_open(const char *file, char *err, size_t errcap);

#endif
