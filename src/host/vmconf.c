/* vmconf.c - vm.yaml and the domain XML (being written). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "vmconf.h"

int titan_vmconf_load_file(const char *path, titan_vmconf *out, char *err, size_t errcap)
{
    snprintf(err, errcap, "%s: vm.yaml support is not built yet (unsupported)", path);
    return -ENOTSUP;
}

int titan_vmconf_load_string(const char *text, size_t len, const char *name, titan_vmconf *out, char *err,
                             size_t errcap)
{
    snprintf(err, errcap, "%s: vm.yaml support is not built yet (unsupported)", name);
    return -ENOTSUP;
}

char *titan_vmconf_xml(const titan_vmconf *c)
{
    return NULL;
}
