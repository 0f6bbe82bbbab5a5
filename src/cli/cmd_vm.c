/* cmd_vm.c - `titan vm define|xml|start|stop|status|autostart|undefine` (being written). */
#include "cli.h"

void cli_help_vm(FILE *f)
{
    fprintf(f, "usage: titan vm define|xml|start|stop|status|autostart|undefine ... (being written)\n");
}

int cli_cmd_vm(cli_globals *g, int argc, char **argv)
{
    fprintf(stderr, "titan vm: unsupported in this build yet\n");
    return CLI_EXIT_REMOTE;
}
