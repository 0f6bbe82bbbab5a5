/* host_check.c - `titan host check` (being written). */
#include "cli.h"

int cli_host_check(cli_globals *g, int argc, char **argv)
{
    fprintf(stderr, "titan host check: unsupported in this build yet\n");
    return CLI_EXIT_REMOTE;
}
