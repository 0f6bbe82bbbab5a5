/* vm.c - the VM life cycle through libvirt (being written). */
#include <errno.h>
#include <stdio.h>

#include "vm.h"

#define S_UNSUPPORTED(what)                                                                      \
    do {                                                                                         \
        snprintf(err, errcap, "%s is not built yet (unsupported)", what);                        \
        return -ENOTSUP;                                                                         \
    } while (0)

int titan_vm_define(virConnectPtr conn, const titan_vmconf *c, titan_vm_say_fn say, void *arg, char *err,
                    size_t errcap)
{
    S_UNSUPPORTED("vm define");
}

int titan_vm_start(virConnectPtr conn, const char *name, char *err, size_t errcap)
{
    S_UNSUPPORTED("vm start");
}

int titan_vm_stop(virConnectPtr conn, const char *name, int timeout_ms, titan_vm_say_fn say, void *arg,
                  titan_vm_stop_result *result, char *err, size_t errcap)
{
    S_UNSUPPORTED("vm stop");
}

int titan_vm_status_get(virConnectPtr conn, const char *name, titan_vm_status *out, char *err, size_t errcap)
{
    S_UNSUPPORTED("vm status");
}

int titan_vm_autostart(virConnectPtr conn, const char *name, bool on, char *err, size_t errcap)
{
    S_UNSUPPORTED("vm autostart");
}

int titan_vm_undefine(virConnectPtr conn, const char *name, bool force, char *err, size_t errcap)
{
    S_UNSUPPORTED("vm undefine");
}
