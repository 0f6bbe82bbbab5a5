/* setup_edit.h - the configuration edits of `titan host setup`: vfio modules in initramfs configurations and
 * kernel parameters in boot loader files. Pure functions on text, no I/O; each keeps every byte it does not
 * need to change and changes nothing when the text already has what it adds (so a second run is a no-op). */
#ifndef TITAN_HOST_SETUP_EDIT_H
#define TITAN_HOST_SETUP_EDIT_H

#include <stdbool.h>
#include <stddef.h>

/* The most names one edit takes. */
#define TITAN_SETUP_MAX_NAMES 32

/* Every edit takes the file's text `in` (NUL-terminated; "" for an empty or missing file) and a list of
 * names (`v`, `n`): module names ("vfio_pci") or kernel parameters ("intel_iommu=on"). It writes the new text
 * to a malloc'd *out, the caller's, equal to `in` when nothing was missing. Returns 0, -ENOMEM, or -EINVAL
 * (more than TITAN_SETUP_MAX_NAMES names, or a value whose quote or parenthesis is never closed). Module
 * names compare with '-' and '_' alike, as modprobe does. A kernel parameter counts as present when a word
 * has its key and its value among the word's comma-separated values ("intel_iommu=on,sm_on"); a word with the
 * key and another value ("iommu=soft") is replaced by the parameter. */

/* mkinitcpio.conf: the missing modules go first in the last MODULES=(...) (or old-style MODULES="...")
 * assignment, before the modules already there; a file without one gets MODULES=(...) at its end. */
int titan_setup_edit_mkinitcpio(const char *in, const char *const *v, size_t n, char **out);

/* True when the last HOOKS assignment of mkinitcpio.conf lists `hook` (false when there is none). */
bool titan_setup_mkinitcpio_has_hook(const char *in, const char *hook);

/* booster.yaml: the missing modules go first in modules_force_load's comma-separated list (added at the end
 * of the file when there is no such key). */
int titan_setup_edit_booster(const char *in, const char *const *v, size_t n, char **out);

/* initramfs-tools/modules (one module a line, '#' comments): each missing module on its own line at the end.
 */
int titan_setup_edit_module_lines(const char *in, const char *const *v, size_t n, char **out);

/* /etc/default/grub: parameters already in GRUB_CMDLINE_LINUX or GRUB_CMDLINE_LINUX_DEFAULT (the last
 * assignment of each) are kept; the missing ones go at the end of GRUB_CMDLINE_LINUX_DEFAULT's value, inside
 * its double or single quotes (an unquoted value gets double quotes). Without that line, the file gets
 * GRUB_CMDLINE_LINUX_DEFAULT="..." at its end. */
int titan_setup_edit_grub(const char *in, const char *const *v, size_t n, char **out);

/* /etc/kernel/cmdline (kernel-install, unified kernel images): the missing parameters after the last word. */
int titan_setup_edit_kernel_cmdline(const char *in, const char *const *v, size_t n, char **out);

/* A boot loader specification entry (systemd-boot's /boot/loader/entries/X.conf): the missing parameters at
 * the end of its last `options` line (an entry without one gets `options ...` at its end). */
int titan_setup_edit_loader_entry(const char *in, const char *const *v, size_t n, char **out);

#endif
