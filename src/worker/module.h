/* module.h - finds and loads titan-worker's optional modules (the TorchScript runner, the CUDA backend). */
#ifndef TITAN_WORKER_MODULE_H
#define TITAN_WORKER_MODULE_H

#include <stddef.h>

/* dlopens `file`: next to this executable (the build tree) when it is there, else in
 * TITAN_RUNNER_LIBDIR (LIBDIR/titan). Returns the handle, or NULL with the path tried and
 * dlerror's reason in err. The module stays loaded until exit. */
void *titan_module_open(const char *file, char *err, size_t errcap);

#endif
