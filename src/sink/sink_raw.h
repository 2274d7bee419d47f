/* sink_raw.h -- a sink for bytes, not rows: the map-only output of `dbatch run` (private). */
#ifndef DBX_SINK_RAW_H
#define DBX_SINK_RAW_H
#include "sink/sink.h"

/* Open dest ("-" for standard output, else a file replaced atomically at commit) for rows of
 * one TEXT column whose bytes are written exactly as they are, nothing added. sink_rows()
 * counts output lines (a last line without a newline counts too). *out is owned by the
 * caller and released by sink_commit or sink_abort. A .gz or .zst name compresses; append
 * adds to an existing file (atomically, see AFILE_APPEND). */
int sink_raw_open(const char *dest, int append, sink **out, dbx_err *err);
#endif
