/* vm.h - the VM's life cycle through the libvirt C API (titan vm ...). Every function takes an open
 * connection, so tests drive them in one process against libvirt's test driver. */
#ifndef TITAN_HOST_VM_H
#define TITAN_HOST_VM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libvirt/libvirt.h>

#include "vmconf.h"

#define TITAN_VM_DEFAULT_URI "qemu:///system"

/* Reports progress and warnings (one line, no newline); may be NULL. */
typedef void (*titan_vm_say_fn)(void *arg, bool warning, const char *line);

/* Defines (or redefines) the domain of `c`; creates its disk first when missing and a size is given
 * (storage API: a volume in the pool holding that directory, else qemu-img). Returns 0 or -errno
 * with why in err. */
int titan_vm_define(virConnectPtr conn, const titan_vmconf *c, titan_vm_say_fn say, void *arg, char *err,
                    size_t errcap);

int titan_vm_start(virConnectPtr conn, const char *name, char *err, size_t errcap);

typedef enum {
    TITAN_VM_STOPPED_CLEANLY = 0, /* the guest powered off within the timeout */
    TITAN_VM_WAS_OFF = 1,         /* it was not running */
    TITAN_VM_DESTROYED = 2,       /* still running at the timeout: destroyed */
} titan_vm_stop_result;

/* Asks the guest to power off (guest agent when the domain has its channel, else the ACPI power
 * button; when the driver refuses a method, falls back to the next one, then to the driver's default,
 * with a warning through `say`), waits up to timeout_ms following domain events (or polling the state
 * where events are not available), returns as soon as it is off, and destroys it at the timeout.
 * Returns 0 and *result, or -errno with why in err. */
int titan_vm_stop(virConnectPtr conn, const char *name, int timeout_ms, titan_vm_say_fn say, void *arg,
                  titan_vm_stop_result *result, char *err, size_t errcap);

typedef struct {
    char name[64];
    char state[24];     /* running, paused, shutoff, crashed, ... */
    char reason[48];    /* libvirt's reason for that state: booted, shutdown, destroyed, crashed, ... */
    bool persistent;
    bool autostart;
    double uptime_s;    /* < 0 when unknown or not running */
    int vcpus;
    uint64_t memory_kib;
    char hostdevs[TITAN_VM_MAX_GPUS * 2][16]; /* PCI addresses "0000:03:00.0" */
    int nhostdevs;
} titan_vm_status;

int titan_vm_status_get(virConnectPtr conn, const char *name, titan_vm_status *out, char *err, size_t errcap);
int titan_vm_autostart(virConnectPtr conn, const char *name, bool on, char *err, size_t errcap);
/* Undefines the domain (refuses while it runs unless `force`, which destroys it first); keeps the disk. */
int titan_vm_undefine(virConnectPtr conn, const char *name, bool force, char *err, size_t errcap);

#endif
