/* test_transport.c -- ranks from the launchers' environments (Slurm, OpenMPI, PMIx, a
 * Kubernetes Indexed Job), the rendezvous file, endpoints, key files and authorized keys. */
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "net/rendezvous.h"
#include "net/transport.h"

/* An environment as a NULL-terminated list of "NAME=VALUE". */
static const char *table_get(const char *name, void *ctx) {
  size_t n = strlen(name);
  for (const char *const *e = ctx; *e; e++)
    if (!strncmp(*e, name, n) && (*e)[n] == '=') return *e + n + 1;
  return NULL;
}

static int detect(const char *mode, const char *const *env, rv_env *e, dbx_err *err) {
  return rv_detect(mode, table_get, (void *)env, e, err);
}

static void test_slurm(void **state) {
  const char *env[] = {"SLURM_PROCID=2", "SLURM_NTASKS=3", "SLURM_JOB_ID=812", "SLURM_STEP_ID=0",
                       "SLURM_CPUS_PER_TASK=4", "SLURM_STEP_NODELIST=h[1-2]", NULL};
  rv_env e;
  dbx_err err = {0, ""};
  assert_int_equal(detect("auto", env, &e, &err), 0);
  assert_string_equal(e.kind, "slurm");
  assert_int_equal(e.rank, 2);
  assert_int_equal(e.size, 3);
  assert_int_equal(e.slots, 4);
  assert_string_equal(e.launch, "slurm-812.0");
  assert_int_equal(detect("slurm", env, &e, &err), 0);
  /* Without SLURM_CPUS_PER_TASK: one slot. A bad one is an error naming it. */
  const char *env2[] = {"SLURM_PROCID=0", "SLURM_NTASKS=2", "SLURM_JOB_ID=9", "SLURM_STEP_ID=3", NULL};
  assert_int_equal(detect("auto", env2, &e, &err), 0);
  assert_int_equal(e.slots, 1);
  assert_string_equal(e.launch, "slurm-9.3");
  const char *bad[] = {"SLURM_PROCID=0", "SLURM_NTASKS=2", "SLURM_JOB_ID=9", "SLURM_STEP_ID=3",
                       "SLURM_CPUS_PER_TASK=lots", NULL};
  assert_int_equal(detect("auto", bad, &e, &err), DBX_EUSAGE);
  assert_non_null(strstr(err.msg, "SLURM_CPUS_PER_TASK"));
  /* A rank past the size, a negative rank, a missing size. */
  const char *past[] = {"SLURM_PROCID=3", "SLURM_NTASKS=3", "SLURM_JOB_ID=1", "SLURM_STEP_ID=0", NULL};
  assert_int_equal(detect("slurm", past, &e, &err), DBX_EUSAGE);
  const char *neg[] = {"SLURM_PROCID=-1", "SLURM_NTASKS=3", "SLURM_JOB_ID=1", "SLURM_STEP_ID=0", NULL};
  assert_int_equal(detect("slurm", neg, &e, &err), DBX_EUSAGE);
  assert_non_null(strstr(err.msg, "SLURM_PROCID"));
  const char *nosize[] = {"SLURM_PROCID=0", "SLURM_JOB_ID=1", "SLURM_STEP_ID=0", NULL};
  assert_int_equal(detect("slurm", nosize, &e, &err), DBX_EUSAGE);
  assert_non_null(strstr(err.msg, "SLURM_NPROCS"));
}

static void test_mpi(void **state) {
  /* OpenMPI's mpirun, even inside a Slurm allocation: its ranks, not Slurm's. */
  const char *env[] = {"OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=4", "OMPI_MCA_ess_base_jobid=466878465",
                       "SLURM_PROCID=0", "SLURM_NTASKS=1", "SLURM_JOB_ID=5", "SLURM_STEP_ID=1", NULL};
  rv_env e;
  dbx_err err = {0, ""};
  assert_int_equal(detect("auto", env, &e, &err), 0);
  assert_string_equal(e.kind, "mpi");
  assert_int_equal(e.rank, 1);
  assert_int_equal(e.size, 4);
  assert_string_equal(e.launch, "mpi-466878465");
  /* srun --mpi=pmix: only PMIX_RANK (with SLURM_* also set, Slurm's ranks are the same). */
  const char *pmix[] = {"PMIX_RANK=2", "PMIX_SIZE=3", "PMIX_NAMESPACE=slurm.pmix.77.0", NULL};
  assert_int_equal(detect("auto", pmix, &e, &err), 0);
  assert_string_equal(e.kind, "mpi");
  assert_int_equal(e.rank, 2);
  assert_string_equal(e.launch, "mpi-slurm.pmix.77.0");
  /* The launch id keeps only safe characters: it names a directory. */
  const char *odd[] = {"OMPI_COMM_WORLD_RANK=0", "OMPI_COMM_WORLD_SIZE=2", "PMIX_NAMESPACE=../../etc x", NULL};
  assert_int_equal(detect("mpi", odd, &e, &err), 0);
  assert_null(strchr(e.launch, '/'));
  assert_null(strchr(e.launch, ' '));
  const char *none[] = {NULL};
  assert_int_equal(detect("mpi", none, &e, &err), DBX_EUSAGE);
  assert_non_null(strstr(err.msg, "OMPI_COMM_WORLD_RANK"));
  assert_int_equal(detect("auto", none, &e, &err), DBX_EUSAGE);
  assert_int_equal(detect("pbs", none, &e, &err), DBX_EUSAGE);
}

static void test_k8s(void **state) {
  /* An Indexed Job: the index is the rank; the manifest gives the size and rank 0's name. */
  const char *env[] = {"JOB_COMPLETION_INDEX=3", "DBATCH_CLUSTER_SIZE=4",
                       "DBATCH_COORDINATOR=wc-0.wc.default.svc.cluster.local:7070", "DBATCH_LAUNCH_ID=wc", NULL};
  rv_env e;
  dbx_err err = {0, ""};
  assert_int_equal(detect("auto", env, &e, &err), 0);
  assert_string_equal(e.kind, "k8s");
  assert_int_equal(e.rank, 3);
  assert_int_equal(e.size, 4);
  assert_string_equal(e.coordinator, "wc-0.wc.default.svc.cluster.local:7070");
  assert_string_equal(e.launch, "k8s-wc");
  assert_int_equal(e.slots, 1);
  const char *slots[] = {"JOB_COMPLETION_INDEX=1", "DBATCH_CLUSTER_SIZE=2", "DBATCH_COORDINATOR=x:1",
                         "DBATCH_SLOTS=2", NULL};
  assert_int_equal(detect("auto", slots, &e, &err), 0);
  assert_int_equal(e.slots, 2);
  const char *badslots[] = {"JOB_COMPLETION_INDEX=1", "DBATCH_CLUSTER_SIZE=2", "DBATCH_COORDINATOR=x:1",
                            "DBATCH_SLOTS=0", NULL};
  assert_int_equal(detect("auto", badslots, &e, &err), DBX_EUSAGE);
  assert_non_null(strstr(err.msg, "DBATCH_SLOTS"));
  const char *nocoord[] = {"JOB_COMPLETION_INDEX=0", "DBATCH_CLUSTER_SIZE=2", NULL};
  assert_int_equal(detect("k8s", nocoord, &e, &err), DBX_EUSAGE);
  assert_non_null(strstr(err.msg, "DBATCH_COORDINATOR"));
  const char *nosize[] = {"JOB_COMPLETION_INDEX=0", "DBATCH_COORDINATOR=x:1", NULL};
  assert_int_equal(detect("k8s", nosize, &e, &err), DBX_EUSAGE);
  assert_non_null(strstr(err.msg, "DBATCH_CLUSTER_SIZE"));
}

static void test_rendezvous(void **state) {
  char dir[] = "/tmp/dbx-rv-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/rendezvous", dir);
  tr_keypair kp;
  dbx_err err = {0, ""};
  assert_int_equal(tr_keypair_new(&kp, &err), 0);
  rv_info w = {"slurm-5.0", "tcp://10.0.0.7:41000", ""}, r;
  memcpy(w.key, kp.pub, sizeof w.key);
  assert_int_equal(rv_write(path, &w, &err), 0);
  assert_int_equal(rv_wait(path, "slurm-5.0", 5, &r, &err), 0);
  assert_string_equal(r.endpoint, w.endpoint);
  assert_string_equal(r.key, kp.pub);
  /* Another launch's file is not ours: waited on until the timeout, which says why. */
  assert_int_equal(rv_wait(path, "slurm-6.0", 0.3, &r, &err), DBX_ETIMEDOUT);
  assert_non_null(strstr(err.msg, "another launch"));
  /* Malformed files. */
  const char *bad[] = {"launch x\n", "endpoint tcp://a:1\n", "launch x\nendpoint http://a:1\n",
                       "launch x\nendpoint tcp://a:1\ncoordinator-key short\n", "launch x y\nendpoint tcp://a:1\n",
                       "launch \x01\nendpoint tcp://a:1\n", "nonsense\n"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    assert_int_equal(rv_parse(bad[i], strlen(bad[i]), "t", &r, &err), DBX_ECORRUPT);
  /* Comments, CRLF, no final newline, fields of a later version: fine. */
  const char *good = "# hi\r\nlaunch x\r\nfuture-field 1\nendpoint ipc://@y";
  assert_int_equal(rv_parse(good, strlen(good), "t", &r, &err), 0);
  assert_string_equal(r.endpoint, "ipc://@y");
  assert_string_equal(r.key, "");
  unlink(path);
  rmdir(dir);
}

static void test_endpoints(void **state) {
  char ep[256];
  dbx_err err = {0, ""};
  assert_int_equal(tr_endpoint("10.0.0.1:5555", "--x", ep, sizeof ep, &err), 0);
  assert_string_equal(ep, "tcp://10.0.0.1:5555");
  assert_int_equal(tr_endpoint("tcp://h:1", "--x", ep, sizeof ep, &err), 0);
  assert_int_equal(tr_endpoint("[::1]:7", "--x", ep, sizeof ep, &err), 0);
  assert_int_equal(tr_endpoint("0.0.0.0:*", "--x", ep, sizeof ep, &err), 0);
  assert_int_equal(tr_endpoint("host", "--x", ep, sizeof ep, &err), DBX_EUSAGE);
  assert_int_equal(tr_endpoint("host:", "--x", ep, sizeof ep, &err), DBX_EUSAGE);
  assert_int_equal(tr_endpoint("host:80a", "--x", ep, sizeof ep, &err), DBX_EUSAGE);
  assert_int_equal(tr_endpoint("[::1]", "--x", ep, sizeof ep, &err), DBX_EUSAGE);
  assert_int_equal(tr_endpoint("udp://h:1", "--x", ep, sizeof ep, &err), DBX_EUSAGE);
  assert_non_null(strstr(err.msg, "--x"));
  assert_true(tr_endpoint_loopback("tcp://127.0.0.1:5"));
  assert_true(tr_endpoint_loopback("tcp://127.3.4.5:5"));
  assert_true(tr_endpoint_loopback("tcp://localhost:5"));
  assert_true(tr_endpoint_loopback("tcp://[::1]:5"));
  assert_true(tr_endpoint_loopback("ipc:///tmp/x"));
  assert_false(tr_endpoint_loopback("tcp://0.0.0.0:5"));
  assert_false(tr_endpoint_loopback("tcp://*:5"));
  assert_false(tr_endpoint_loopback("tcp://10.0.0.1:5"));
  assert_false(tr_endpoint_loopback("tcp://localhost.evil.org:5"));
  assert_false(tr_endpoint_loopback("tcp://127.0.0.1;10.0.0.1:5"));  /* the destination counts */
}

static void test_keys_and_authorized(void **state) {
  tr_keypair a, b, k;
  dbx_err err = {0, ""};
  assert_int_equal(tr_keypair_new(&a, &err), 0);
  assert_int_equal(tr_keypair_new(&b, &err), 0);
  char text[512];
  snprintf(text, sizeof text, "# c\r\npublic-key %s\r\nsecret-key %s\r\n", a.pub, a.sec);
  assert_int_equal(tr_keypair_parse(text, strlen(text), "t", &k, &err), 0);
  assert_string_equal(k.pub, a.pub);
  /* Halves of two pairs, a missing half, a bad key. */
  snprintf(text, sizeof text, "public-key %s\nsecret-key %s\n", a.pub, b.sec);
  assert_int_equal(tr_keypair_parse(text, strlen(text), "t", &k, &err), DBX_EINVAL);
  assert_non_null(strstr(err.msg, "not the public half"));
  snprintf(text, sizeof text, "public-key %s\n", a.pub);
  assert_int_equal(tr_keypair_parse(text, strlen(text), "t", &k, &err), DBX_EINVAL);
  snprintf(text, sizeof text, "public-key %s\nsecret-key %.39s\n", a.pub, a.sec);
  assert_int_equal(tr_keypair_parse(text, strlen(text), "t", &k, &err), DBX_EINVAL);
  assert_non_null(strstr(err.msg, "t line 2"));
  /* Authorized keys: comments, names, blank lines; a key may start with '#'-free text only
   * at the line's start ('#' inside a key is Z85). */
  tr_authz z = {0, NULL, NULL};
  snprintf(text, sizeof text, "# workers\n\n  %s node1 rack 2\n%s\n", a.pub, b.pub);
  assert_int_equal(tr_authz_parse(text, strlen(text), "t", &z, &err), 0);
  assert_int_equal(z.n, 2);
  unsigned char raw[32];
  assert_non_null(zmq_z85_decode(raw, a.pub));
  long i = tr_authz_find(&z, raw);
  assert_true(i >= 0);
  assert_string_equal(z.names[i], "node1 rack 2");
  tr_keypair c;
  assert_int_equal(tr_keypair_new(&c, &err), 0);
  assert_non_null(zmq_z85_decode(raw, c.pub));
  assert_int_equal(tr_authz_find(&z, raw), -1);
  tr_authz_free(&z);
  snprintf(text, sizeof text, "%s\nshort-key\n", a.pub);
  assert_int_equal(tr_authz_parse(text, strlen(text), "keys.txt", &z, &err), DBX_EINVAL);
  assert_non_null(strstr(err.msg, "keys.txt line 2"));
  tr_authz_free(&z);
  /* Files: saved 0600, never over an existing one; loaded back; refused when others can
   * read it. */
  char dir[] = "/tmp/dbx-key-XXXXXX", path[256], pub[256];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/k", dir);
  snprintf(pub, sizeof pub, "%s/k.pub", dir);
  assert_int_equal(tr_keypair_save(&a, path, "me\nX", 0, &err), 0);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_int_equal(tr_keypair_save(&b, path, "me", 0, &err), DBX_EINVAL);
  assert_int_equal(tr_keypair_load(path, &k, &err), 0);
  assert_string_equal(k.sec, a.sec);
  char pk[TR_KEY_LEN + 1];
  assert_int_equal(tr_pubkey_load(pub, pk, &err), 0);
  assert_string_equal(pk, a.pub);
  assert_int_equal(tr_pubkey_load(a.pub, pk, &err), 0);  /* the key itself */
  assert_int_equal(tr_pubkey_load(path, pk, &err), DBX_EINVAL);  /* a secret file */
  assert_non_null(strstr(err.msg, "secret key file"));
  chmod(path, 0640);
  assert_int_equal(tr_keypair_load(path, &k, &err), DBX_EINVAL);
  assert_non_null(strstr(err.msg, "chmod 600"));
  /* The comment's newline does not start a second line in the .pub. */
  FILE *f = fopen(pub, "r");
  assert_non_null(f);
  char all[256];
  size_t n = fread(all, 1, sizeof all - 1, f);
  fclose(f);
  all[n] = 0;
  assert_int_equal(n, TR_KEY_LEN + 6);
  assert_ptr_equal(strchr(all, '\n'), all + n - 1);
  assert_memory_equal(all + TR_KEY_LEN, " me_X\n", 6);
  unlink(path);
  unlink(pub);
  rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_slurm),     cmocka_unit_test(test_mpi),
      cmocka_unit_test(test_k8s),       cmocka_unit_test(test_rendezvous),
      cmocka_unit_test(test_endpoints), cmocka_unit_test(test_keys_and_authorized),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
