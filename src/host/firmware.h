/* firmware.h - the VM's UEFI firmware (OVMF) found through QEMU's firmware descriptors: the JSON files of
 * QEMU's docs/interop/firmware.json that Arch (edk2-ovmf), Debian (ovmf) and Fedora (edk2-ovmf) install in
 * /usr/share/qemu/firmware, with overrides in /etc/qemu/firmware and a user's ~/.config/qemu/firmware. */
#ifndef TITAN_HOST_FIRMWARE_H
#define TITAN_HOST_FIRMWARE_H

#include <stdbool.h>
#include <stddef.h>

#include "sysroot.h"

#define TITAN_FIRMWARE_PATH_MAX 1024 /* as titan_vmconf's loader and nvram */

typedef struct {
    char descriptor[TITAN_FIRMWARE_PATH_MAX];     /* the descriptor chosen (a host path) */
    char loader[TITAN_FIRMWARE_PATH_MAX];         /* mapping.executable.filename: the CODE flash, raw */
    char nvram_template[TITAN_FIRMWARE_PATH_MAX]; /* mapping.nvram-template.filename; "" when none */
    bool secure_boot;                             /* features: "secure-boot" */
    bool enrolled_keys;                           /* features: "enrolled-keys" (Microsoft's keys) */
    bool requires_smm;                            /* features: "requires-smm": the domain needs <smm> */
} titan_firmware;

/* Says why a descriptor was passed over (one line, no newline); may be NULL. */
typedef void (*titan_firmware_warn_fn)(void *arg, const char *line);

/* Finds x86_64 UEFI firmware in split flash form (raw CODE, optional VARS template) for QEMU machine type
 * `machine` ("q35", "pc-q35-7.2", ...; NULL: q35) among the descriptors under `sr`: those of `user_dir`
 * (a host path such as ~/.config/qemu/firmware, or NULL), /etc/qemu/firmware, then
 * /usr/share/qemu/firmware. A file name in an earlier directory hides the same name in later ones (an empty
 * file hides it and offers nothing), and names are tried in sorted order, as QEMU and libvirt do. A build
 * without Secure Boot comes first, then one without enrolled keys, then the rest: a GPU VM with an
 * out-of-tree NVIDIA driver wants neither. A descriptor that is unreadable, too large, not valid JSON or not
 * shaped as the specification says, or whose files are missing, is skipped with a warning naming it. Returns
 * 0 and *out, -ENOENT with what to install or write in err when nothing fits, or -ENOMEM. */
int titan_firmware_find(const titan_sysroot *sr, const char *user_dir, const char *machine,
                        titan_firmware_warn_fn warn, void *arg, titan_firmware *out, char *err,
                        size_t errcap);

#endif
