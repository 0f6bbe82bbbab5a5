/* setup_diff.h - unified diffs of small text files (what `titan host setup --dry-run` prints). */
#ifndef TITAN_HOST_SETUP_DIFF_H
#define TITAN_HOST_SETUP_DIFF_H

/* Writes the unified diff (3 lines of context, GNU diff's hunk format, "\ No newline at end of file" where
 * due) that turns `a` into `b` to a malloc'd string *out, the caller's: "" when they are equal. `a` NULL is a
 * new file ("--- /dev/null"). `name` is the path without its leading '/', shown as a/NAME and b/NAME, so
 * `patch -p1` applies the diff from the root. Returns 0 or -ENOMEM. */
int titan_setup_diff(const char *name, const char *a, const char *b, char **out);

#endif
