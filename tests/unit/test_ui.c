/* test_ui.c -- the job's post-mortem: status.json, status.txt and report.html keep how each
 * worker ended (never "finished" for a dead one), a job that left input out is "partial", a
 * failed job states its error; the dashboard's thread blocks every signal. */
#include "check.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>

#include "engine/job.h"
#include "ui/ui.h"

static ui *open_ui(const char *dir, const char *dashboard) {
  ui_opts o = {dashboard, 0, 1, dir, NULL};
  ui *u = NULL;
  dbx_err err = {0, ""};
  assert_int_equal(ui_new(&o, "wordcount", &u, &err), 0);
  assert_non_null(u);
  return u;
}

static char *slurp_in(const char *dir, const char *name) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  char *s = read_file(path, NULL);
  assert_non_null(s);
  return s;
}

static void worker(ui_worker *w, uint32_t id, const char *state) {
  memset(w, 0, sizeof *w);
  w->id = id;
  w->slots = 1;
  w->pid = 100 + id;
  snprintf(w->host, sizeof w->host, "h%u", id);
  w->state = state;
}

static void info(worker_info *x, uint32_t id) {
  memset(x, 0, sizeof *x);
  x->id = id;
  x->slots = 1;
  x->pid = 100 + id;
  snprintf(x->host, sizeof x->host, "h%u", id);
  x->tasks = id;
}

/* The states the coordinator reports, and the last word at the end of the job. */
static void test_final_states_keep_how_workers_ended(void **state) {
  const char *dir = test_tmpdir();
  ui *u = open_ui(dir, NULL);
  job j;
  memset(&j, 0, sizeof j);
  ui_worker w[8];
  const char *live[] = {"alive", "alive", "alive", "alive", "alive", "joining", "alive", "alive"};
  for (uint32_t i = 0; i < 8; i++) worker(&w[i], i + 1, live[i]);
  ui_tick(u, &j, w, 8, "wordcount", 0);
  /* Right after (no file is due): the states still count. */
  const char *end[] = {"alive", "killed", "exited", "lost", "excluded", "joining", "dead", "alive"};
  for (uint32_t i = 0; i < 8; i++) w[i].state = end[i];
  ui_tick(u, &j, w, 8, "wordcount", 0);
  /* The coordinator's summary: workers 1..6; workers 7 and 8 were dropped from it (8 while
   * it looked alive here). */
  worker_info wi[6];
  for (uint32_t i = 0; i < 6; i++) info(&wi[i], i + 1);
  j.winfo = wi;
  j.nwinfo = 6;
  dbx_err err = {0, ""}, uerr = {0, ""};
  assert_int_equal(ui_finish(u, &j, 1, &err, &uerr), 0);
  char *js = slurp_in(dir, "status.json");
  const char *want[] = {"finished", "killed", "exited", "lost", "excluded", "finished", "dead", "lost"};
  for (uint32_t i = 0; i < 8; i++) {
    char frag[160];
    snprintf(frag, sizeof frag, "\"id\":%u,\"host\":\"h%u\",\"pid\":%u,\"state\":\"%s\"", i + 1, i + 1, 101 + i, want[i]);
    if (!strstr(js, frag)) fail_msg("status.json lacks %s:\n%s", frag, js);
  }
  assert_non_null(strstr(js, "\"state\":\"done\""));
  char *tx = slurp_in(dir, "status.txt");
  assert_non_null(strstr(tx, "job wordcount: done after"));
  assert_non_null(strstr(tx, "\n2      killed    h2 "));
  assert_non_null(strstr(tx, "\n3      exited    h3 "));
  assert_non_null(strstr(tx, "\n4      lost      h4 "));
  assert_non_null(strstr(tx, "\n1      finished  h1 "));
  char *html = slurp_in(dir, "report.html");
  assert_non_null(strstr(html, "<span id=\"state\" class=\"state done\">done</span>"));
  free(js);
  free(tx);
  free(html);
  ui_free(u);
  rm_rf(dir);
}


/* Attempts are found again by their ticket: the one ended gets its outcome, others stay
 * running, a ticket whose entry the ring has since overwritten (5000 newer attempts)
 * changes nothing, nor does a ticket that names another attempt. */
static void test_attempt_tickets(void **state) {
  const char *dir = test_tmpdir();
  ui *u = open_ui(dir, NULL);
  job j;
  memset(&j, 0, sizeof j);
  ui_worker w[1];
  worker(&w[0], 1, "alive");
  uint64_t t0 = ui_attempt_start(u, 1, 0, 1, 1);
  uint64_t t1 = ui_attempt_start(u, 1, 1, 1, 1);
  uint64_t t2 = ui_attempt_start(u, 1, 2, 1, 1);
  ui_attempt_end(u, t1, 1, 1, 1, 1, UI_OK);
  ui_attempt_end(u, t2, 1, 2, 2, 1, UI_FAILED);  /* another attempt's ticket: ignored */
  ui_attempt_end(u, t0, 1, 0, 1, 1, UI_FAILED);
  ui_tick(u, &j, w, 1, "wordcount", 1);
  char *js = slurp_in(dir, "status.json");
  assert_non_null(strstr(js, "\"task\":0,\"attempt\":1"));
  const char *want[] = {"\"task\":0,", "failed", "\"task\":1,", "ok", "\"task\":2,", "running"};
  const char *p = js;
  for (int i = 0; i < 6; i++) {
    p = strstr(p, want[i]);
    if (!p) fail_msg("status.json lacks %s in order:\n%s", want[i], js);
  }
  free(js);
  /* 5000 newer attempts overwrite t2's entry: ending it later touches none of them. */
  for (uint32_t k = 0; k < 5000; k++) ui_attempt_start(u, 2, k, 1, 1);
  ui_attempt_end(u, t2, 1, 2, 1, 1, UI_OK);
  ui_attempt_end(u, 0, 2, 0, 1, 1, UI_OK);
  uint64_t last = ui_attempt_start(u, 2, 9999, 1, 1);
  ui_attempt_end(u, last, 2, 9999, 1, 1, UI_OK);
  ui_tick(u, &j, w, 1, "wordcount", 1);
  dbx_err err = {0, ""}, uerr = {0, ""};
  assert_int_equal(ui_finish(u, &j, 1, &err, &uerr), 0);  /* writes status.json now */
  js = slurp_in(dir, "status.json");
  assert_null(strstr(js, "\"outcome\":\"failed\""));
  p = strstr(js, "\"task\":9999,");
  assert_non_null(p);
  assert_non_null(strstr(p, "\"outcome\":\"ok\""));
  /* Of the 5000, none was ended: only the last attempt is ok. */
  int oks = 0;
  for (const char *q = js; (q = strstr(q, "\"outcome\":\"ok\"")) != NULL; q++) oks++;
  assert_int_equal(oks, 1);
  free(js);
  ui_free(u);
}

static void test_partial_and_failed(void **state) {
  const char *dir = test_tmpdir();
  ui *u = open_ui(dir, NULL);
  job j;
  memset(&j, 0, sizeof j);
  job_missing miss;
  memset(&miss, 0, sizeof miss);
  snprintf(miss.where, sizeof miss.where, "task 3 (evil\x1b[2J.txt lines 1-10)");
  j.missing = &miss;
  j.nmissing = 1;
  dbx_err err = {0, ""}, uerr = {0, ""};
  assert_int_equal(ui_finish(u, &j, 1, &err, &uerr), 0);
  char *js = slurp_in(dir, "status.json"), *tx = slurp_in(dir, "status.txt"), *html = slurp_in(dir, "report.html");
  assert_non_null(strstr(js, "\"state\":\"partial\""));
  assert_non_null(strstr(js, "\"warning\":\"done with skipped input: 1 task(s)"));
  assert_non_null(strstr(tx, "job wordcount: partial after"));
  assert_non_null(strstr(tx, "warning: done with skipped input: 1 task(s)"));
  assert_non_null(strstr(tx, "missing from the result: task 3 (evil\\e[2J.txt lines 1-10)\n"));
  assert_null(strchr(tx, '\x1b'));
  assert_non_null(strstr(html, "<span id=\"state\" class=\"state partial\">done with skipped input</span>"));
  free(js);
  free(tx);
  free(html);
  ui_free(u);

  u = open_ui(dir, NULL);
  j.nmissing = 0;
  dbx_seterr(&err, DBX_ETASK, "wordcount task 7 failed 4 times; last: worker was killed by signal 9");
  assert_int_equal(ui_finish(u, &j, 0, &err, &uerr), 0);
  js = slurp_in(dir, "status.json");
  tx = slurp_in(dir, "status.txt");
  html = slurp_in(dir, "report.html");
  assert_non_null(strstr(js, "\"state\":\"failed\",\"error\":\"wordcount task 7 failed 4 times; last: worker was killed by signal 9\""));
  assert_non_null(strstr(tx, "job wordcount: failed after"));
  assert_non_null(strstr(tx, "\nerror: wordcount task 7 failed 4 times; last: worker was killed by signal 9\n"));
  assert_non_null(strstr(html, "class=\"state failed\">failed</span>"));
  assert_non_null(strstr(html, "id=\"error\""));
  free(js);
  free(tx);
  free(html);
  ui_free(u);
  rm_rf(dir);
}

/* Every thread other than this one must block every signal (SigBlk all ones). */
static int other_threads_block_all(int *nthreads) {
  char self[32];
  snprintf(self, sizeof self, "%ld", (long)getpid());
  DIR *d = opendir("/proc/self/task");
  assert_non_null(d);
  struct dirent *e;
  int ok = 1;
  *nthreads = 0;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.' || !strcmp(e->d_name, self)) continue;
    char path[300];
    snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
    char *st = read_file(path, NULL);
    if (!st) continue;
    const char *blk = strstr(st, "SigBlk:");
    assert_non_null(blk);
    unsigned long long mask = strtoull(blk + 7, NULL, 16);
    (*nthreads)++;
    /* 64 signals; SIGKILL and SIGSTOP cannot be blocked, and the C library may keep its
     * own two (32, 33) unblocked. */
    unsigned long long never = (1ull << (SIGKILL - 1)) | (1ull << (SIGSTOP - 1)) | (3ull << 31);
    if ((mask | never) != ~0ull) {
      fprintf(stderr, "thread %s: SigBlk %016llx\n", e->d_name, mask);
      ok = 0;
    }
    free(st);
  }
  closedir(d);
  return ok;
}

/* One GET of the dashboard at url ("http://127.0.0.1:PORT/"): its reply's first bytes. */
static void get_once(const char *url, char *out, size_t cap) {
  int port = atoi(strrchr(url, ':') + 1);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  static const char req[] = "GET /status.txt HTTP/1.0\r\n\r\n";
  assert_int_equal(write(fd, req, sizeof req - 1), (ssize_t)(sizeof req - 1));
  size_t n = 0;
  ssize_t k;
  while (n + 1 < cap && (k = read(fd, out + n, cap - 1 - n)) > 0) n += (size_t)k;
  out[n] = 0;
  close(fd);
}

static void test_dashboard_thread_blocks_signals(void **state) {
  sigset_t before, after;
  sigemptyset(&before);
  pthread_sigmask(SIG_SETMASK, NULL, &before);
  ui *u = open_ui(NULL, "127.0.0.1:0");
  assert_non_null(ui_url(u));
  /* Once the server has answered, its thread runs with the mask it keeps (a thread just
   * created may still show its creator's). */
  char reply[256];
  get_once(ui_url(u), reply, sizeof reply);
  assert_non_null(strstr(reply, "X-Dbatch-State: starting"));
  assert_non_null(strstr(reply, "job wordcount: starting after"));
  int n = 0;
  assert_true(other_threads_block_all(&n));
  assert_true(n >= 1);
  /* This thread's mask is as it was. */
  pthread_sigmask(SIG_SETMASK, NULL, &after);
  for (int s = 1; s < 32; s++) assert_int_equal(sigismember(&before, s), sigismember(&after, s));
  ui_free(u);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_final_states_keep_how_workers_ended),
      cmocka_unit_test(test_attempt_tickets),
      cmocka_unit_test(test_partial_and_failed),
      cmocka_unit_test(test_dashboard_thread_blocks_signals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
