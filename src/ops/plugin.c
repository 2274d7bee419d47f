/* plugin.c -- loading operators from C plugin libraries: read, checksum, dlopen from a
 * private memory file, check the dbatch_plugin table and copy the operator into a full-size
 * dbx_op (see "Plugins" in dbatch.h for the ABI rules this enforces). */
#define _GNU_SOURCE 1  /* memfd_create */
#include "ops/plugin.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

struct plugin {
  struct plugin *next;      /* opened by plugin_open_file: the list plugin_of() searches */
  int listed;
  void *handle;             /* dlopen handle */
  dbx_op op;                /* the picked operator, copied to this dbatch's full size */
  char *bytes;              /* the library as read (coordinator) or received (worker) */
  size_t n;
  uint64_t xxh64;
  char label[256];          /* the file name, for messages */
};

/* How many bytes of dbx_op a plugin of each ABI version has. Fields are only ever appended
 * to dbx_op; a version that appends fields adds its end here and bumps DBX_ABI_VERSION.
 * The static assertion below stops a build whose dbx_op grew without a new entry. */
#define OP_END(field) (offsetof(dbx_op, field) + sizeof(((dbx_op *)0)->field))
static const size_t op_size_at[DBX_ABI_VERSION + 1] = {
    [1] = OP_END(merge_encoded),
};
_Static_assert(sizeof(dbx_op) == OP_END(merge_encoded),
               "dbx_op grew: add its new end to op_size_at and bump DBX_ABI_VERSION");
/* The same rule holds for dbx_plugin itself; version 1 has abi_version, nops and ops. */
_Static_assert(offsetof(dbx_plugin, abi_version) == 0, "abi_version must stay the first field");

#define PLUGIN_MAX_OPS 1024
#define PLUGIN_MAX_COLS 256

static pthread_mutex_t list_mu = PTHREAD_MUTEX_INITIALIZER;
static plugin *list_head;

const dbx_op *plugin_op(const plugin *p) { return &p->op; }
const char *plugin_bytes(const plugin *p, size_t *n) { *n = p->n; return p->bytes; }
uint64_t plugin_xxh64(const plugin *p) { return p->xxh64; }
const char *plugin_label(const plugin *p) { return p->label; }

const plugin *plugin_of(const dbx_op *op) {
  pthread_mutex_lock(&list_mu);
  const plugin *p = list_head;
  while (p && &p->op != op) p = p->next;
  pthread_mutex_unlock(&list_mu);
  return p;
}

void plugin_close(plugin *p) {
  if (!p) return;
  if (p->listed) {
    pthread_mutex_lock(&list_mu);
    for (plugin **q = &list_head; *q; q = &(*q)->next)
      if (*q == p) { *q = p->next; break; }
    pthread_mutex_unlock(&list_mu);
  }
  if (p->handle) dlclose(p->handle);
  free(p->bytes);
  free(p);
}

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* dlopen's message names the path it was given (/proc/self/fd/N, a temporary file): drop
 * that prefix, the caller names the library itself. */
static void dl_fail(plugin *p, const char *path, dbx_err *err) {
  const char *e = dlerror();
  if (!e) e = "unknown error";
  size_t n = strlen(path);
  if (!strncmp(e, path, n) && e[n] == ':') e += n + 1;
  while (*e == ' ') e++;
  dbx_seterr(err, DBX_EUSAGE, "%s: cannot load it as a library: %s", p->label, e);
}

/* dlopen n bytes from a private file: a memfd (no name in any file system, gone with the
 * process), else a file in a fresh 0700 directory under $TMPDIR, removed at once after
 * dlopen (the mapping stays). RTLD_LOCAL: plugins never see each other's symbols; the dbx_*
 * helpers they call resolve from the dbatch executable, which exports them. */
static int load(plugin *p, const char *bytes, size_t n, dbx_err *err) {
  char path[PATH_MAX];
  int fd = memfd_create("dbatch-plugin", MFD_CLOEXEC);
  if (fd >= 0) {
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    if (write_all(fd, bytes, n) || access(path, R_OK)) {
      close(fd);
      fd = -1;  /* no /proc, or a memfd that cannot be written: use a directory */
    } else {
      p->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
      if (!p->handle) dl_fail(p, path, err);
      close(fd);
      return p->handle ? 0 : DBX_EUSAGE;
    }
  }
  const char *tmp = getenv("TMPDIR");
  char dir[PATH_MAX - 16];  /* room for "/plugin.so" in path */
  snprintf(dir, sizeof dir, "%s/dbatch-plugin-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir))
    return dbx_seterr(err, DBX_EIO, "%s: cannot make a private directory to load it from (%s): %s", p->label, dir,
                      strerror(errno));
  snprintf(path, sizeof path, "%s/plugin.so", dir);
  int rc = 0;
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0700);
  if (fd < 0 || write_all(fd, bytes, n)) {
    rc = dbx_seterr(err, DBX_EIO, "%s: cannot write %s to load it: %s", p->label, path, strerror(errno));
  } else {
    p->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!p->handle) {
      dl_fail(p, path, err);
      rc = DBX_EUSAGE;
    }
  }
  if (fd >= 0) close(fd);
  unlink(path);
  rmdir(dir);
  return rc;
}

static int good_name(const char *s) {
  size_t n = strnlen(s, PLUGIN_NAME_MAX + 1);
  if (n == 0 || n > PLUGIN_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
          s[i] == '_' || s[i] == '-' || s[i] == '.'))
      return 0;
  return 1;
}

/* Check the loaded library's table and copy the operator called opname (NULL: the only
 * one). Everything read from the library is checked before it is used. */
static int pick(plugin *p, const char *opname, dbx_err *err) {
  const dbx_plugin *t = dlsym(p->handle, "dbatch_plugin");
  if (!t)
    return dbx_seterr(err, DBX_EUSAGE,
                      "%s: no 'dbatch_plugin' symbol: not a dbatch plugin (it must export "
                      "const dbx_plugin dbatch_plugin = {DBX_ABI_VERSION, nops, ops})", p->label);
  uint32_t abi = t->abi_version;  /* the first field in every version */
  if (abi < 1 || abi > DBX_ABI_VERSION)
    return dbx_seterr(err, DBX_EUSAGE,
                      "%s: built for plugin ABI version %u, this dbatch %s supports versions 1 to %d: "
                      "rebuild it against this dbatch's dbatch.h", p->label, abi, dbx_version(), DBX_ABI_VERSION);
  if (t->nops == 0 || t->nops > PLUGIN_MAX_OPS || !t->ops)
    return dbx_seterr(err, DBX_EUSAGE, "%s: dbatch_plugin lists %u operators (1 to %d expected, ops not NULL)",
                      p->label, t->nops, PLUGIN_MAX_OPS);
  char names[512] = "";
  size_t used = 0;
  const dbx_op *src = NULL;
  for (uint32_t i = 0; i < t->nops; i++) {
    const dbx_op *o = t->ops[i];
    if (!o || !o->name || !good_name(o->name))
      return dbx_seterr(err, DBX_EUSAGE,
                        "%s: operator %u of dbatch_plugin has no valid name (1 to %d of A-Z a-z 0-9 _ - .)",
                        p->label, i, PLUGIN_NAME_MAX);
    if (used < sizeof names) {
      int w = snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "", o->name);
      if (w > 0) used += (size_t)w;
    }
    if (opname ? !strcmp(o->name, opname) : t->nops == 1) src = o;
  }
  if (!src && opname)
    return dbx_seterr(err, DBX_EUSAGE, "%s: no operator '%s' in this library (it has: %s)", p->label, opname, names);
  if (!src)
    return dbx_seterr(err, DBX_EUSAGE, "%s: the library has %u operators (%s): name one with --op %s:NAME",
                      p->label, t->nops, names, p->label);
  /* Never read past the end of the plugin's dbx_op: only the fields of its ABI version. */
  memset(&p->op, 0, sizeof p->op);
  memcpy(&p->op, src, op_size_at[abi]);
  dbx_op *op = &p->op;
  const char *missing = !op->partial_new ? "partial_new" : !op->partial_free ? "partial_free" : !op->map ? "map"
                      : !op->merge ? "merge" : !op->encode ? "encode" : !op->decode ? "decode"
                      : !op->finish ? "finish" : !op->schema ? "schema" : NULL;
  if (missing) return dbx_seterr(err, DBX_EUSAGE, "%s: operator '%s' has no %s", p->label, op->name, missing);
  if (!op->bcast_load != !op->bcast_free)
    return dbx_seterr(err, DBX_EUSAGE, "%s: operator '%s' has only one of bcast_load and bcast_free", p->label,
                      op->name);
  const dbx_schema *s = op->schema;
  if (s->ncol == 0 || s->ncol > PLUGIN_MAX_COLS || !s->names || !s->types)
    return dbx_seterr(err, DBX_EUSAGE, "%s: operator '%s': its schema has %u columns (1 to %d, with names and types)",
                      p->label, op->name, s->ncol, PLUGIN_MAX_COLS);
  for (uint32_t c = 0; c < s->ncol; c++)
    if (!s->names[c] || !s->names[c][0] || (s->types[c] != DBX_COL_TEXT && s->types[c] != DBX_COL_INT &&
                                             s->types[c] != DBX_COL_REAL && s->types[c] != DBX_COL_NUM))
      return dbx_seterr(err, DBX_EUSAGE, "%s: operator '%s': column %u of its schema has no name or an unknown type",
                        p->label, op->name, c);
  /* A plugin operator's configuration is the --op-arg text; its size is the stage's. */
  op->cfg_size = 0;
  return 0;
}

static void set_label(plugin *p, const char *label) {
  snprintf(p->label, sizeof p->label, "%s", label && *label ? label : "plugin");
}

int plugin_open_file(const char *path, const char *opname, plugin **out, dbx_err *err) {
  *out = NULL;
  plugin *p = calloc(1, sizeof *p);
  if (!p) return dbx_seterr(err, DBX_ENOMEM, "%s: out of memory", path);
  set_label(p, path);
  int rc = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat sb;
  if (fd < 0) {
    rc = dbx_seterr(err, DBX_EUSAGE, "%s: cannot open the plugin: %s", path, strerror(errno));
    goto fail;
  }
  if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
    rc = dbx_seterr(err, DBX_EUSAGE, "%s: not a plugin library: %s", path,
                    S_ISDIR(sb.st_mode) ? "it is a directory" : "not a regular file");
    goto fail;
  }
  if ((uint64_t)sb.st_size > PLUGIN_MAX_BYTES || sb.st_size == 0) {
    rc = dbx_seterr(err, DBX_EUSAGE, "%s: not a plugin library: %lld bytes (1 to %u accepted)", path,
                    (long long)sb.st_size, PLUGIN_MAX_BYTES);
    goto fail;
  }
  p->n = (size_t)sb.st_size;
  if (!(p->bytes = malloc(p->n))) { rc = dbx_seterr(err, DBX_ENOMEM, "%s: out of memory", path); goto fail; }
  for (size_t got = 0; got < p->n;) {
    ssize_t r = read(fd, p->bytes + got, p->n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      rc = dbx_seterr(err, DBX_EUSAGE, "%s: cannot read the plugin: %s", path, r ? strerror(errno) : "it shrank");
      goto fail;
    }
    got += (size_t)r;
  }
  close(fd);
  fd = -1;
  p->xxh64 = XXH64(p->bytes, p->n, 0);
  /* Load exactly the bytes read (and shipped to workers), not the path again. */
  if ((rc = load(p, p->bytes, p->n, err)) || (rc = pick(p, opname, err))) goto fail;
  pthread_mutex_lock(&list_mu);
  p->next = list_head;
  list_head = p;
  p->listed = 1;
  pthread_mutex_unlock(&list_mu);
  *out = p;
  return 0;
fail:
  if (fd >= 0) close(fd);
  plugin_close(p);
  return rc;
}

int plugin_open_bytes(const char *label, const char *bytes, size_t n, uint64_t xxh64, const char *opname,
                      plugin **out, dbx_err *err) {
  *out = NULL;
  char name[256];
  snprintf(name, sizeof name, "%s", label && *label ? label : "plugin");
  /* Checked before a single byte is loaded: a damaged library is never run. */
  uint64_t h = XXH64(bytes, n, 0);
  if (h != xxh64)
    return dbx_seterr(err, DBX_ECORRUPT,
                      "plugin %s: the %zu bytes received hash to %016llx, the coordinator sent %016llx: not loaded",
                      name, n, (unsigned long long)h, (unsigned long long)xxh64);
  if (n == 0 || n > PLUGIN_MAX_BYTES) return dbx_seterr(err, DBX_EPROTO, "plugin %s: %zu bytes", name, n);
  plugin *p = calloc(1, sizeof *p);
  if (!p) return dbx_seterr(err, DBX_ENOMEM, "plugin %s: out of memory", name);
  set_label(p, name);
  p->xxh64 = xxh64;  /* the bytes are not kept: a worker never sends them on */
  int rc = load(p, bytes, n, err);
  if (!rc) rc = pick(p, opname, err);
  if (rc) {
    plugin_close(p);
    return rc;
  }
  *out = p;
  return 0;
}
