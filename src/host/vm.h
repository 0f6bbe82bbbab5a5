/* vm.h - the VM's life cycle through the libvirt C API (titan vm ...). Every function takes an open
 * connection, so tests drive them in one process against libvirt's test driver. */
#ifndef TITAN_HOST_VM_H
#define TITAN_HOST_VM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <libvirt/libvirt.h>

#include "vmconf.h"

#define TITAN_VM_DEFAULT_URI "qemu:///system"

/* Reports progress and warnings (one line, no newline); may be NULL. */
typedef void (*titan_vm_say_fn)(void *arg, bool warning, const char *line);

/* Prepares libvirt for this process, once (later calls do nothing): silences libvirt's own printing of
 * errors to stderr (every function here reports them in err) and registers libvirt's default event
 * loop, which titan_vm_stop runs to follow domain events. Call it before opening any connection. */
void titan_vm_init(void);

/* True for libvirt's embedded QEMU driver (qemu:///embed?root=DIR), which runs inside this process: after a
 * connection its threads may still be reconnecting to the running domains, and exit's library teardown under
 * them crashes (libvirt 9: numa_bitmask_isbitset in virCPUProbeHost). A command done with such a connection
 * ends with titan_vm_exit. */
bool titan_vm_uri_embedded(const char *uri);
/* Flushes stdio and ends the process with `status` at once, without running library destructors. */
__attribute__((noreturn)) void titan_vm_exit(int status);

/* Opens `uri` (NULL: TITAN_VM_DEFAULT_URI) read-write. Returns the connection (close it with
 * virConnectClose), or NULL with errno set and "cannot connect to URI: why; hint" in err. */
virConnectPtr titan_vm_connect(const char *uri, char *err, size_t errcap);

/* Creates c's disk image when it is missing and c->disk_size_bytes is set: a volume of the storage pool
 * whose target path is the image's directory, else `qemu-img create` (found on PATH). Returns 1 when it
 * made the image, 0 when there was nothing to do, or -errno with why in err. */
int titan_vm_ensure_disk(virConnectPtr conn, const titan_vmconf *c, titan_vm_say_fn say, void *arg, char *err,
                         size_t errcap);

/* Defines (or redefines) the domain described by `xml`. Says "defined NAME (new|updated)". Returns 1 when
 * the domain is new, 0 when it replaced a definition, or -errno with why in err. */
int titan_vm_define_xml(virConnectPtr conn, const char *xml, titan_vm_say_fn say, void *arg, char *err,
                        size_t errcap);

/* Turns vm.yaml's kvm: auto into on or off for this connection (libvirt's domain capabilities for type kvm):
 * without KVM, off (TCG emulation) with a warning through `say`. kvm: on without KVM fails (-ENOTSUP, why and
 * what to do in err); kvm: off stays, with a note. A driver that cannot tell (the test driver) keeps KVM.
 * Returns 0 or -errno. */
int titan_vm_resolve_kvm(virConnectPtr conn, titan_vmconf *c, titan_vm_say_fn say, void *arg, char *err,
                         size_t errcap);

/* Defines (or redefines) the domain of `c`; creates its disk first when missing and a size is given
 * (storage API: a volume in the pool holding that directory, else qemu-img). Returns 1 (new) or 0
 * (updated) as titan_vm_define_xml does, or -errno with why in err. */
int titan_vm_define(virConnectPtr conn, const titan_vmconf *c, titan_vm_say_fn say, void *arg, char *err,
                    size_t errcap);

/* Starts the domain. Returns 0 when it started it, 1 when it was already running (or paused), or
 * -errno with why in err (-ENOENT: no such domain). */
int titan_vm_start(virConnectPtr conn, const char *name, char *err, size_t errcap);

typedef enum {
    TITAN_VM_STOPPED_CLEANLY = 0, /* the guest powered off within the timeout */
    TITAN_VM_WAS_OFF = 1,         /* it was not running */
    TITAN_VM_DESTROYED = 2,       /* still running at the timeout: destroyed */
} titan_vm_stop_result;

/* Asks the guest to power off (guest agent when the domain has its channel, else the ACPI power
 * button; when the driver refuses a method, falls back to the next one, then to the driver's default,
 * with a warning through `say`), waits up to timeout_ms following domain events (or polling the state
 * every 100 ms where events are not available), returns as soon as it is off, and destroys it at the
 * timeout (with a warning "still running after N s: destroyed").
 * Returns 0 and *result, or -errno with why in err. */
int titan_vm_stop(virConnectPtr conn, const char *name, int timeout_ms, titan_vm_say_fn say, void *arg,
                  titan_vm_stop_result *result, char *err, size_t errcap);

typedef struct {
    char name[64];
    char state[24];  /* running, paused, shutoff, crashed, ... */
    char reason[48]; /* libvirt's reason for that state: booted, shutdown, destroyed, crashed, ... */
    bool persistent;
    bool autostart;
    double uptime_s; /* < 0 when unknown or not running */
    int vcpus;
    uint64_t memory_kib;
    char hostdevs[TITAN_VM_MAX_GPUS * 2][16]; /* PCI addresses "0000:03:00.0" */
    int nhostdevs;
} titan_vm_status;

/* Fills *out for domain `name`. uptime_s comes from the QEMU process (its pid file under libvirt's
 * run directory, then /proc/PID/stat) on a local qemu:// connection, and is -1 elsewhere (the test
 * driver, remote hosts, an unreadable pid file). Returns 0, or -errno (-ENOENT: no such domain). */
int titan_vm_status_get(virConnectPtr conn, const char *name, titan_vm_status *out, char *err, size_t errcap);
int titan_vm_autostart(virConnectPtr conn, const char *name, bool on, char *err, size_t errcap);
/* Undefines the domain (refuses while it runs, -EBUSY, unless `force`, which destroys it first); keeps
 * the disk and says where it is; removes its NVRAM where the driver can (VIR_DOMAIN_UNDEFINE_NVRAM),
 * else undefines it plainly. Returns 0 or -errno with why in err. */
int titan_vm_undefine(virConnectPtr conn, const char *name, bool force, titan_vm_say_fn say, void *arg,
                      char *err, size_t errcap);

/* Seconds since process `pid` started (from /proc/PID/stat and /proc/uptime). Returns 0 and *out, or
 * -errno. */
int titan_vm_process_uptime(pid_t pid, double *out);

#endif
