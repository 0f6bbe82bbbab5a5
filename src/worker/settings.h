/* settings.h - titan-worker's settings: one table drives the options, the config file, --help and the checks. */
#ifndef TITAN_WORKER_SETTINGS_H
#define TITAN_WORKER_SETTINGS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

/* How a setting's value is written and where it goes in titan_config. */
typedef enum {
    TITAN_SETTING_TEXT, /* char *: any text that .check (if any) accepts */
    TITAN_SETTING_LIST, /* char *[], with an int count: repeatable, at most .hi entries */
    TITAN_SETTING_ENUM, /* char *: one of .choices */
    TITAN_SETTING_FLAG, /* bool: an option without a value; true/false (yes/no, 1/0) in the file */
    TITAN_SETTING_INT,  /* int in .lo ... .hi; K, M and G suffixes (powers of 1024) are accepted */
    TITAN_SETTING_U64,  /* uint64_t in .lo ... .hi; the same suffixes */
} titan_setting_type;

typedef struct titan_setting titan_setting;
struct titan_setting {
    const char *name;  /* the long option (without "--") and the config file's key */
    const char *alias; /* a second name for the same setting, or NULL */
    titan_setting_type type;
    size_t offset;       /* of the field in titan_config */
    size_t count_offset; /* LIST: of its int count */
    uint64_t lo, hi;     /* INT, U64: the accepted range; LIST: hi is the most entries */
    const char *unit;    /* said with the range in errors ("ms", "MiB", "bytes"); LIST: what an entry is */
    /* The default, as the config file would say it; NULL: none (the field stays zero, and the help
     * says what the worker does then). A LIST's default applies only when neither the file nor the
     * command line gave an entry. */
    const char *def;
    const char *const *choices; /* ENUM: the accepted values, NULL-terminated */
    /* More checks on a value (TEXT, LIST): returns 0, or -EINVAL with a message in err that names the
     * setting as name (the name or the alias it was given by). */
    int (*check)(const char *name, const char *value, char *err, size_t errcap);
    const char *metavar; /* --help: the value's placeholder ("N", "MS", "FILE"); NULL for a FLAG */
    const char *help;    /* --help: the text; each '\n' continues on an indented line */
};

/* The table, in --help's order; *n gets its length. */
const titan_setting *titan_settings_table(size_t *n);
/* The setting named name (or by its alias), or NULL. */
const titan_setting *titan_settings_find(const char *name);

/* Zeroes cfg and applies every default. Returns 0, or -ENOMEM (cfg is then safe to free). */
int titan_settings_init(titan_config *cfg);
/* Frees what cfg owns (its strings and list entries) and zeroes it; takes a zeroed cfg. */
void titan_settings_free(titan_config *cfg);

/* Applies one setting by its name or alias ("bind", "max-queue"...). A LIST gains an entry, the others
 * are replaced. Returns 0, -EINVAL with a message in err for a bad value, -ENOENT for an unknown name,
 * or -ENOMEM. */
int titan_settings_set(titan_config *cfg, const char *name, const char *value, char *err, size_t errcap);
/* Applies the "key = value" lines of path ('#' comments, blank lines skipped). Returns 0, or -errno with
 * "PATH:LINE: why" (or why the file could not be read) in err. */
int titan_settings_load(titan_config *cfg, const char *path, char *err, size_t errcap);

/* What the command line asks for. */
typedef enum {
    TITAN_SETTINGS_RUN,     /* serve, with the settings in cfg */
    TITAN_SETTINGS_HELP,    /* -h, --help */
    TITAN_SETTINGS_VERSION, /* --version */
} titan_settings_action;

/* Fills an initialised cfg from argv: defaults, then --config FILE, then the other options (the command
 * line wins; a --bind there replaces the file's binds), then the defaults of lists still empty.
 * Returns 0 with *action set (cfg is complete only for TITAN_SETTINGS_RUN), or -errno for a usage error
 * with a message in err (empty where getopt_long has already printed one). */
int titan_settings_parse_args(titan_config *cfg, int argc, char **argv, titan_settings_action *action, char *err,
                              size_t errcap);

/* Prints titan-worker --help: the usage, every setting of the table, --config, --version, --help. */
void titan_settings_print_help(FILE *f);

#endif
