/* router.c - being written. */
