/* cmd_status.c - `titan status`: one line per component (being written). */
#include "cli.h"

void cli_help_status(FILE *f)
{
    fprintf(f, "usage: titan status [--backends FILE] [--connect URI] [--redis URL] [--json] (being written)\n");
}

int cli_cmd_status(cli_globals *g, int argc, char **argv)
{
    fprintf(stderr, "titan status: unsupported in this build yet\n");
    return CLI_EXIT_REMOTE;
}
