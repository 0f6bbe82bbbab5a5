/* host_setup.c - `titan host setup` (being written). */
#include "cli.h"

int cli_host_setup(cli_globals *g, int argc, char **argv)
{
    fprintf(stderr, "titan host setup: unsupported in this build yet\n");
    return CLI_EXIT_REMOTE;
}
