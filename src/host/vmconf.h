/* vmconf.h - the VM's small YAML config (vm.yaml) and the libvirt domain XML made from it.
 *
 *   name: titan-worker             # required: 1..63 of [A-Za-z0-9_.-]
 *   memory: 8GiB                   # required: N, N MiB, N GiB (KiB/MiB/GiB/TiB, or M/G suffixes); >= 256 MiB
 *   vcpus: 4                       # required: 1..256
 *   topology: {sockets: 1, cores: 4, threads: 1}   # optional; the product must equal vcpus
 *   disk:                          # required
 *     path: /var/lib/libvirt/images/titan-worker.qcow2 # absolute
 *     size: 40GiB                  # optional: create the image when missing (qcow2 or raw)
 *     format: qcow2                # qcow2 (default) or raw
 *   gpu: [0000:03:00.0, 0000:03:00.1]   # PCI functions passed through (managed); DDDD:BB:SS.F or BB:SS.F
 *   firmware: efi                  # efi (default: OVMF from QEMU's firmware descriptors, see firmware.h,
 *                                  #   filled in by `titan vm`; else <os firmware='efi'> autoselection),
 *                                  #   bios, or {loader: /usr/share/edk2/x64/OVMF_CODE.4m.fd,
 *                                  #   nvram: /var/lib/libvirt/qemu/nvram/titan-worker_VARS.fd}
 *   network: default               # a libvirt network name (default "default", NAT); none; or user:
 *                                  #   QEMU's user-mode network (no bridge, no libvirt network; the guest is
 *                                  #   10.0.2.15 behind the host), passed to QEMU as its own arguments
 *   forward: [127.0.0.1:5555:5555] # with network: user only: [HOST_ADDR:]HOST_PORT:GUEST_PORT (TCP; the
 *                                  #   address defaults to 127.0.0.1); at most TITAN_VM_MAX_FORWARDS
 *   mac: 52:54:00:12:34:56         # optional
 *   guest_agent: true              # optional (default false): a virtio-serial org.qemu.guest_agent.0 channel
 *   hide_kvm: true                 # optional (default false): <kvm><hidden state='on'/></kvm> (+ vendor_id)
 *   graphics: none                 # none (default) or spice
 *   machine: q35                   # optional (default q35)
 *   kvm: auto                      # auto (default): KVM where the host has it, else TCG emulation with a
 *                                  #   warning (resolved by `titan vm`); on: KVM or fail; off: TCG always
 *   console_log: /var/log/titan/vm-console.log   # optional: the serial console's output also goes there
 *
 * Errors name the file, the line and the field, as compute_backends.yaml's do. */
#ifndef TITAN_HOST_VMCONF_H
#define TITAN_HOST_VMCONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TITAN_VM_MAX_GPUS 8
#define TITAN_VM_MAX_FORWARDS 16

/* vm.yaml's kvm: the hypervisor's accelerator. */
typedef enum { TITAN_VM_KVM_AUTO = 0, TITAN_VM_KVM_ON, TITAN_VM_KVM_OFF } titan_vm_kvm;

/* One port forward of the user-mode network: host_addr:host_port on the host to guest_port in the guest. */
typedef struct {
    char host_addr[16]; /* dotted IPv4 */
    int host_port, guest_port;
} titan_vm_forward;

typedef struct {
    char name[64];
    uint64_t memory_kib;
    int vcpus;
    int sockets, cores, threads; /* 0 when no topology was given */
    char disk_path[1024];
    uint64_t disk_size_bytes; /* 0: the image must exist */
    char disk_format[8];      /* "qcow2" or "raw" */
    char gpus[TITAN_VM_MAX_GPUS][16]; /* normalized "0000:03:00.0" */
    int ngpus;
    char firmware[8];   /* "efi" or "bios" */
    char loader[1024];  /* explicit loader path ("" for autoselection) */
    char nvram[1024];   /* explicit nvram path ("" for libvirt's default) */
    /* Set from a firmware descriptor (never from vm.yaml): the VARS template libvirt copies into a new
     * nvram file, and what the chosen build needs (loader secure='yes', <smm state='on'/>). */
    char nvram_template[1024];
    bool secure_boot;
    bool smm;
    char network[64];   /* "" for none; "user" for QEMU's user-mode network */
    titan_vm_forward forwards[TITAN_VM_MAX_FORWARDS]; /* network: user only */
    int nforwards;
    char mac[18];       /* "" for libvirt's choice */
    bool guest_agent;
    bool hide_kvm;
    char graphics[8];   /* "none" or "spice" */
    char machine[32];   /* "q35" */
    /* As vm.yaml says; `titan vm` turns AUTO into ON or OFF for its connection (titan_vm_resolve_kvm) before
     * it renders the XML. AUTO renders as ON (type kvm). */
    titan_vm_kvm kvm;
    char console_log[1024]; /* "" for none */
} titan_vmconf;

/* True when the domain for `c` is user-mode networked. */
bool titan_vmconf_user_net(const titan_vmconf *c);

/* Reads and checks vm.yaml. Returns 0 and *out, or -errno (-ENOENT, -EACCES, -EINVAL for a bad file)
 * with "FILE:LINE: FIELD: what is wrong; what to do" in err. *out is written only on success. */
int titan_vmconf_load_file(const char *path, titan_vmconf *out, char *err, size_t errcap);
int titan_vmconf_load_string(const char *text, size_t len, const char *name, titan_vmconf *out, char *err,
                             size_t errcap);

/* The libvirt domain XML for `c` (type kvm, or qemu when c->kvm is OFF: TCG, a CPU model of QEMU's own
 * instead of the host's, no KVM hiding), malloc'd, or NULL when out of memory. */
char *titan_vmconf_xml(const titan_vmconf *c);

#endif
