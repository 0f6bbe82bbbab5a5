/* pci.h - PCI functions as sysfs shows them under a titan_sysroot (ids, class, driver, IOMMU group, reset,
 * display use), and their names from pci.ids through libpci. */
#ifndef TITAN_HOST_PCI_H
#define TITAN_HOST_PCI_H

#include <stdbool.h>
#include <stddef.h>

#include "sysroot.h"

#define TITAN_PCI_ADDR_SIZE 16 /* "0000:65:00.0" and its NUL, rounded up */
/* Functions read from /sys/bus/pci/devices at most (SR-IOV hosts have many). */
#define TITAN_PCI_MAX_FNS 16384
#define TITAN_PCI_MAX_GROUP 256 /* members of one IOMMU group read at most */

/* One PCI function. */
typedef struct {
    char addr[TITAN_PCI_ADDR_SIZE]; /* "0000:65:00.0", lower case */
    unsigned vendor, device;        /* 0x10de, 0x17c2 */
    unsigned cls;                   /* the 24-bit class code: 0x030000 VGA, 0x060400 PCI bridge */
    int boot_vga;                   /* 1 the firmware's boot display, 0 not, -1 no boot_vga file */
    int group;                      /* IOMMU group, -1 none (IOMMU off) */
    char driver[64];                /* the bound driver, "" none */
    char driver_override[64];       /* "" when "(null)" or empty */
    char reset_methods[128];        /* reset_method ("flr bus"), "" when the kernel shows none */
    bool has_reset;                 /* the `reset` attribute exists */
} titan_pci_fn;

/* Normalizes a PCI address "0000:65:00.0" or "65:00.0" (domain 0000) into out (lower case, with domain).
 * Returns 0 or -EINVAL. */
int titan_pci_parse_address(const char *s, char out[TITAN_PCI_ADDR_SIZE]);

/* Parses "10de:17c2" (1-4 hex digits each). Returns 0 and *vendor, *device, or -EINVAL. */
int titan_pci_parse_ids(const char *s, unsigned *vendor, unsigned *device);

/* Reads the function `addr` (normalized) from /sys/bus/pci/devices/ADDR into *fn. Returns 0, -ENOENT when
 * there is no such function, or -EINVAL/-errno when its vendor, device or class cannot be read. */
int titan_pci_read_fn(const titan_sysroot *sr, const char *addr, titan_pci_fn *fn);

/* Reads every function of /sys/bus/pci/devices (entries that are not PCI addresses, or that cannot be
 * read, are skipped), sorted by address, into a malloc'd array. Returns 0 and *fns, *n (the caller frees
 * *fns), or -errno (-ENOENT without /sys/bus/pci/devices, -E2BIG past TITAN_PCI_MAX_FNS). */
int titan_pci_list_fns(const titan_sysroot *sr, titan_pci_fn **fns, size_t *n);

/* Returns the function with address `addr` in fns[0..n), or NULL. */
const titan_pci_fn *titan_pci_find(const titan_pci_fn *fns, size_t n, const char *addr);

/* Reads the members of IOMMU group `group` (/sys/kernel/iommu_groups/N/devices), sorted by address, into a
 * malloc'd array. Returns 0 and *fns, *n (the caller frees *fns), or -errno. */
int titan_pci_group_fns(const titan_sysroot *sr, int group, titan_pci_fn **fns, size_t *n);

/* Class tests: a PCI-to-PCI bridge (0x0604xx), a display controller (0x03xxxx), a GPU (VGA 0x0300xx or
 * 3D 0x0302xx). */
bool titan_pci_is_bridge(const titan_pci_fn *fn);
bool titan_pci_is_display(const titan_pci_fn *fn);
bool titan_pci_is_gpu(const titan_pci_fn *fn);

/* True when a and b are functions of the same device (same domain, bus and device numbers). */
bool titan_pci_same_device(const char *a, const char *b);

/* Tells whether the function `addr` drives a display of the host now: a DRM card of it with a connected
 * connector (/sys/class/drm/cardN-CONNECTOR/status), or a framebuffer on it (/sys/class/graphics/fbN/device).
 * Returns 1 and a reason in why[cap], 0 when neither is seen. */
int titan_pci_display_use(const titan_sysroot *sr, const char *addr, char *why, size_t cap);

/* Names of vendors, devices and classes from SYSROOT/usr/share/misc/pci.ids or
 * SYSROOT/usr/share/hwdata/pci.ids (libpci's parser; never udev's hwdb, never the network). */
typedef struct titan_pci_names titan_pci_names;

/* Loads the first pci.ids found. Returns the object (without names when there is no usable file: see
 * titan_pci_names_source), or NULL when out of memory. */
titan_pci_names *titan_pci_names_new(const titan_sysroot *sr);
/* Frees *p (NULL is fine) and sets it to NULL. */
void titan_pci_names_destroy(titan_pci_names **p);
/* The pci.ids in use (a borrowed host path such as "/usr/share/misc/pci.ids"), or NULL when names are
 * off; *why (when not NULL) then says why ("no pci.ids", "pci.ids: Parse error at line 3"). */
const char *titan_pci_names_source(const titan_pci_names *nm, const char **why);
/* Writes "NVIDIA Corporation GM200 [GeForce GTX TITAN X]" into out[cap]: the vendor and device names,
 * "Vendor (device 17c2)" when only the vendor is known, "" when neither (or nm is NULL). */
void titan_pci_names_device(titan_pci_names *nm, const titan_pci_fn *fn, char *out, size_t cap);
/* Writes the class name ("VGA compatible controller", "Audio device") into out[cap], "" when unknown. */
void titan_pci_names_class(titan_pci_names *nm, const titan_pci_fn *fn, char *out, size_t cap);

#endif
