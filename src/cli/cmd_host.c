/* cmd_host.c - `titan host check|setup|bind|unbind`: VFIO passthrough readiness of this host. */
#include <string.h>

#include "cli.h"

void cli_help_host(FILE *f)
{
    fprintf(f,
            "usage: titan host check [--gpu VENDOR:DEVICE[,...] | --address 0000:99:00.0[,...]] [--sysroot DIR]\n"
            "                        [--json]\n"
            "       titan host setup --gpu VENDOR:DEVICE[,...] [--distro auto|arch|debian|fedora] [--dry-run]\n"
            "                        [--apply-boot] [--kernel VERSION] [--sysroot DIR] [--json]\n"
            "       titan host bind|unbind ADDRESS [--dry-run] [--sysroot DIR] [--json]\n"
            "\n"
            "Prepares this host to pass a GPU through to a VM with VFIO (design phase 1):\n"
            "  check    reports every prerequisite (CPU virtualization, IOMMU, kernel command line,\n"
            "           vfio modules, the target GPU's IOMMU group and drivers) as ok, warn or fail,\n"
            "           with a hint to fix each; exit 0 when the host is ready, 1 when not\n"
            "  setup    writes the modprobe, initramfs and kernel command line configuration, once\n"
            "           (running it again changes nothing), with a backup of every file it changes\n"
            "  bind     moves a device (every function of its IOMMU group) to vfio-pci now\n"
            "  unbind   gives it back to its host driver\n"
            "\n"
            "Run `titan host COMMAND --help` for each command's options. Every file is read and written\n"
            "under --sysroot DIR when given (default /), so the commands can be tried on a copy.\n");
}

int cli_cmd_host(cli_globals *g, int argc, char **argv)
{
    if (argc < 1) {
        fprintf(stderr, "titan host: give a command: check, setup, bind or unbind; see `titan help host`\n");
        return CLI_EXIT_USAGE;
    }
    const char *sub = argv[0];
    if (strcmp(sub, "check") == 0) return cli_host_check(g, argc - 1, argv + 1);
    if (strcmp(sub, "setup") == 0) return cli_host_setup(g, argc - 1, argv + 1);
    if (strcmp(sub, "bind") == 0) return cli_host_bind(g, true, argc - 1, argv + 1);
    if (strcmp(sub, "unbind") == 0) return cli_host_bind(g, false, argc - 1, argv + 1);
    fprintf(stderr, "titan host: unknown command \"%s\"; use check, setup, bind or unbind\n", sub);
    return CLI_EXIT_USAGE;
}
