/* host_bind.c - `titan host bind|unbind` (being written). */
#include "cli.h"

int cli_host_bind(cli_globals *g, bool bind, int argc, char **argv)
{
    fprintf(stderr, "titan host %s: unsupported in this build yet\n", bind ? "bind" : "unbind");
    return CLI_EXIT_REMOTE;
}
