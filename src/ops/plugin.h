/* plugin.h -- operators from C plugin libraries (`dbatch run --op LIB.so[:NAME]`), private.
 * A plugin is loaded from bytes (the coordinator reads the file once; workers receive the
 * same bytes in the stage message), so every process runs exactly the library the
 * coordinator checked, and nothing has to be installed on remote workers. */
#ifndef DBX_OPS_PLUGIN_H
#define DBX_OPS_PLUGIN_H
#include <stddef.h>
#include <stdint.h>
#include "dbatch.h"

/* Largest library accepted (it travels in one stage message to every worker). */
#define PLUGIN_MAX_BYTES (256u << 20)
/* Longest operator name (worker messages quote it). */
#define PLUGIN_NAME_MAX 63

typedef struct plugin plugin;

/* Read the library at path, load it and pick operator opname (NULL: the library's only
 * operator). Every problem is DBX_EUSAGE with one line naming path and what is wrong: not
 * readable, a directory, not a loadable library, no dbatch_plugin symbol, another ABI
 * version, a malformed table, an operator name it does not have. OUT *out: owned by the
 * caller (plugin_close). Also makes the plugin findable by plugin_of(). */
int plugin_open_file(const char *path, const char *opname, plugin **out, dbx_err *err);

/* Load a library received from a coordinator: n bytes that must hash (XXH64, seed 0) to
 * xxh64 -- checked before anything is loaded (DBX_ECORRUPT otherwise). label is the file
 * name the coordinator gave, for messages. Loaded from a private memory file (memfd), or a
 * 0700 temporary directory where memfd is not available. OUT *out as above; not findable by
 * plugin_of() (workers do not send stage messages). */
int plugin_open_bytes(const char *label, const char *bytes, size_t n, uint64_t xxh64, const char *opname,
                      plugin **out, dbx_err *err);

/* The operator picked, as a full-size dbx_op of this dbatch (fields the plugin's ABI version
 * does not have are zero). Valid until plugin_close. */
const dbx_op *plugin_op(const plugin *p);
/* The library's bytes, their XXH64 and its file name (label), for the stage message. */
const char *plugin_bytes(const plugin *p, size_t *n);
uint64_t plugin_xxh64(const plugin *p);
const char *plugin_label(const plugin *p);

/* Unload (dlclose) and free; accepts NULL. Nothing of the plugin may be in use. */
void plugin_close(plugin *p);

/* The plugin opened by plugin_open_file in this process whose operator is op, or NULL
 * (a built-in operator). The coordinator uses it to ship the library with the stage. */
const plugin *plugin_of(const dbx_op *op);
#endif
