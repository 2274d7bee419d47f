"""Hostile peers that speak the protocol well but send crafted contents.

A fake worker answers the classifier's prediction tasks with partial results whose shape
is wrong (a confusion key without its NUL, a class index past the model's classes), and a
fake coordinator sends a worker a stage without a broadcast and a task whose shipped segment
lengths wrap around 2^64. Nobody crashes: the coordinator refuses the partial (or fails the
job with a clear error), the worker answers with a failure naming the problem and carries on.
"""
import os
import signal
import struct
import time
import unittest

import msgpack
import zmq

from dbx import DATA, TmpTest, free_port, run, slurp, start, stop, wait_for_line

FIX = os.path.join(DATA, "nbcorpus")
U64 = 2 ** 64 - 1
DBX_ELOST = -21  # "an earlier stage's output is lost" (include/dbatch.h)


def pack(*fields):
    return msgpack.packb(["DBX", 1, *fields], use_bin_type=True)


def crafted_partial(kind, ncls):
    """A prediction partial of one row: [nrows, rows, [key, count, ...]]."""
    row = msgpack.packb([0, -1, 0, None])
    if kind == "no-nul":
        key = b"alpha" + struct.pack("=I", 0)  # the truth label is not NUL-terminated
    elif kind == "class-past-end":
        key = b"alpha\x00" + struct.pack("=I", ncls + 96)
    else:
        raise ValueError(kind)
    return msgpack.packb([1, row, [key, 1]], use_bin_type=True)


class FakeWorker:
    """Says hello to ep and answers every task of the prediction stage with a crafted partial;
    counts what it answered."""

    def __init__(self, ctx, ep, kind, ncls):
        self.s = ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(ep)
        self.kind, self.ncls = kind, ncls
        self.answered = []
        self.s.send(pack(1, 1, "fake-evil", os.getpid(), True))

    def serve(self, seconds):
        stage_op = {}
        end = time.time() + seconds
        while time.time() < end:
            if not self.s.poll(100):
                continue
            m = msgpack.unpackb(self.s.recv(), raw=False)
            if m[2] == 4:                      # stage: remember its operator
                stage_op[m[3]] = m[4]
            elif m[2] == 5 and stage_op.get(m[3]) == "nb_predict":
                stage, index, attempt = m[3], m[4], m[5]
                self.s.send(pack(6, stage, index, attempt, 1, 0, 10, 0.001,
                                 crafted_partial(self.kind, self.ncls), ""))
                self.answered.append(index)
                return True
            elif m[2] == 8:
                self.s.send(pack(8))
        return False

    def close(self):
        self.s.close()


class HostilePartials(TmpTest):
    def model(self):
        m = self.path("model.nbm")
        run("nb", "train", "--corpus", os.path.join(FIX, "train"), "--model", m, "--workers", "0")
        return m

    def classify_with_fake_worker(self, kind):
        """Returns (exit status, predictions, stderr, predictions of a clean run)."""
        model = self.model()
        test = os.path.join(FIX, "test")
        clean, got = self.path("clean.tsv"), self.path("got.tsv")
        run("nb", "test", "--model", model, "--corpus", test, "--workers", "0", "--predictions", clean,
            "--batch-docs", "1")
        ep = "tcp://127.0.0.1:%d" % free_port()
        coord = start("nb", "test", "--model", model, "--corpus", test, "--workers", "0", "--listen", ep,
                      "--predictions", got, "--batch-docs", "1", "--worker-timeout", "3", "-v")
        ctx = zmq.Context()
        fake = real = None
        try:
            wait_for_line(coord.stderr, "waiting for workers")
            fake = FakeWorker(ctx, ep, kind, 3)
            self.assertTrue(fake.serve(30), "the fake worker was given no prediction task")
            # A real worker then joins: a coordinator that refused the partial gives it the task.
            real = start("worker", "--connect", ep, "--slots", "1")
            _, err = coord.communicate(timeout=120)
            out = slurp(got) if os.path.exists(got) else None
            return coord.returncode, out, err.decode(errors="replace"), slurp(clean)
        finally:
            if fake:
                fake.close()
            ctx.term()
            for p in (coord, real):
                if p and p.poll() is None:
                    p.kill()
                if p:
                    p.communicate()

    def assert_no_crash(self, rc, err):
        self.assertGreaterEqual(rc, 0, "coordinator killed by signal %d:\n%s" % (-rc, err))
        self.assertNotIn(rc, (128 + signal.SIGSEGV, 128 + signal.SIGABRT, 134, 139), err)

    def test_confusion_key_without_nul_is_refused_and_retried(self):
        # decode() refuses it: the attempt fails on the fake worker, the real one redoes it.
        rc, out, err, want = self.classify_with_fake_worker("no-nul")
        self.assert_no_crash(rc, err)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, want)
        self.assertIn("task 0 attempt 1 failed on worker 1 (fake-evil", err)
        self.assertIn("sent a bad result: naive Bayes: malformed partial result", err)
        self.assertIn("fake-evil", err)

    def test_class_index_past_the_model_is_refused(self):
        # The class count comes from the model (the stage's broadcast): the coordinator
        # checks every partial against it on arrival, so the bad one is a failed attempt of
        # that task on that worker, retried elsewhere, and the output is exact.
        rc, out, err, want = self.classify_with_fake_worker("class-past-end")
        self.assert_no_crash(rc, err)
        self.assertIn("names class 99 of 3", err)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, want)


class HostileCoordinator(TmpTest):
    """A fake coordinator: the worker answers bad stages and tasks with failures and lives."""

    def setUp(self):
        super().setUp()
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.w = start("worker", "--connect", "tcp://127.0.0.1:%d" % port, "--slots", "1")
        self.assertTrue(self.router.poll(10000), "no hello from the worker")
        self.ident, _ = self.router.recv_multipart()
        self.send(2, 1, 1000)  # welcome

    def tearDown(self):
        if self.w.poll() is None:
            self.w.kill()
        self.w.communicate()
        self.router.close()
        self.ctx.term()
        super().tearDown()

    def send(self, *fields):
        self.router.send_multipart([self.ident, pack(*fields)])

    def answers(self, n, timeout=20):
        got = {}
        end = time.time() + timeout
        while len(got) < n and time.time() < end:
            if self.router.poll(200):
                m = msgpack.unpackb(self.router.recv_multipart()[1], raw=False)
                if m[2] in (6, 7):
                    got[(m[3], m[4])] = m
        return got

    def finish(self):
        self.assertIsNone(self.w.poll(), "the worker died (status %s)" % self.w.poll())
        self.send(10)  # bye
        self.assertEqual(self.w.wait(timeout=10), 0)

    def test_vocabulary_stage_with_empty_broadcast(self):
        doc = self.write("doc.txt", "alpha beta\n")
        cfg = b"\0" * 12  # nb_cfg: format, proba, bad_fail
        self.send(4, 1, "nb_vocab", cfg, b"", [doc])
        self.send(5, 1, 0, 1, [[0, 0, 11, U64, U64, 11]], True, b"alpha beta\n", True)
        # and a stage that is fine afterwards still works
        self.send(4, 2, "wordcount", b"\0" * 32, b"", [doc])
        self.send(5, 2, 0, 1, [[0, 0, 11, 0, 1, 11]], True, b"alpha beta\n", False)
        got = self.answers(2)
        self.assertEqual(got[(1, 0)][2], 7, got)  # failure, not a NULL dereference
        self.assertIn("malformed stage broadcast", got[(1, 0)][7])
        self.assertEqual(got[(2, 0)][2], 6, got)  # the word count after it ran
        self.assertEqual(msgpack.unpackb(got[(2, 0)][10], raw=False), ["alpha", 1, "beta", 1])
        self.finish()

    def test_vocabulary_task_of_refused_stage_names_why(self):
        doc = self.write("doc.txt", "alpha beta\n")
        self.send(4, 1, "nb_vocab", b"\0" * 12, b"", [doc])
        self.send(5, 1, 3, 1, [[0, 0, 11, U64, U64, 11]], True, b"alpha beta\n", True)
        got = self.answers(1)
        self.assertEqual(got[(1, 3)][2], 7, got)  # failure
        self.assertIn("stage 1 refused by this worker", got[(1, 3)][7])
        self.assertIn("malformed stage broadcast", got[(1, 3)][7])
        self.finish()

    def test_shipped_lengths_that_wrap_around(self):
        doc = self.write("doc.txt", "abcd\n")
        self.send(4, 1, "wordcount", b"\0" * 32, b"", [doc])
        # U64 + 6 wraps to 5, the length of data: the sum must not pass the check.
        self.send(5, 1, 0, 1, [[0, 0, 5, 0, 1, U64], [0, 0, 5, 0, 1, 6]], True, b"abcd\n", False)
        self.send(5, 1, 1, 1, [[0, 0, 5, 0, 1, 5]], True, b"abcd\n", False)  # a good one
        got = self.answers(2)
        self.assertEqual(got[(1, 0)][2], 7, "a task with wrapping lengths was not refused: %r" % (got,))
        self.assertIn("malformed task", got[(1, 0)][7])
        self.assertEqual(got[(1, 1)][2], 6, got)
        self.assertEqual(msgpack.unpackb(got[(1, 1)][10], raw=False), ["abcd", 1])
        self.finish()




class HostileRelayedFiles(TmpTest):
    """A fake worker that reads nothing by path gets a partitioned reduce's files relayed, and
    sends back crafted ones: a name that climbs out of the spill directory, a file of another
    task, none of the files its task writes. None is written; the attempt (or the worker) is
    refused; the real worker redoes the task and the answer is exact."""

    def relayed_job(self, kind, more=()):
        import keyed_ref  # noqa: E402
        import gen_keyed  # noqa: E402
        sales = self.path("sales.csv")
        gen_keyed.CHUNK = 500
        gen_keyed.csv_sales(sales, 3000, 50, seed=2)
        _, rows, _ = keyed_ref.groupby_ref([sales], None, "product", "count,sum:qty")
        port = free_port()
        ep = "tcp://127.0.0.1:%d" % port
        coord = start("groupby", sales, "--key", "product", "--agg", "count,sum:qty", "--partitions", "3",
                      "--batch-bytes", "8K", "--workers", "1", "--listen", "127.0.0.1:%d" % port, "--wait-workers",
                      "2", "--policy", "round-robin", "--job-dir", self.path("job"), *more)
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(ep)
        s.send(pack(1, 1, "fake-evil", os.getpid(), False))
        answered = []
        inputs = {}
        try:
            end = time.time() + 60
            while time.time() < end and coord.poll() is None:
                if not s.poll(100):
                    continue
                m = msgpack.unpackb(s.recv(), raw=False)
                if m[2] == 5 and len(m) == 11:   # a task with relayed files (its last field)
                    stage, index, attempt = m[3], m[4], m[5]
                    if kind == "damaged":
                        if self.crafted(kind, s, m, stage, index, attempt, inputs):
                            answered.append(index)
                        continue
                    if kind == "no-field":  # a plain result, as if it had written the files itself
                        s.send(pack(6, stage, index, attempt, 1, 0, 10, 0.001, self.EMPTY, ""))
                        answered.append(index)
                        continue
                    if kind == "lost" and m[10] != []:  # a reduce task says its inputs are gone
                        s.send(pack(7, stage, index, attempt, DBX_ELOST, "fake: an earlier stage's output is lost"))
                        answered.append(index)
                        continue
                    if kind == "climb":
                        files = [["../../evil-%d.kv" % index, b"x"]]
                    elif kind == "other-task":
                        files = [["s0-m%d-p%d.kv" % (index + 1, r), b"x"] for r in range(3)]
                    else:
                        files = []
                    s.send(pack(6, stage, index, attempt, 1, 0, 10, 0.001, b"", "", files))
                    answered.append(index)
                elif m[2] == 8:
                    s.send(pack(8))
            out, err = coord.communicate(timeout=120)
        finally:
            stop(coord)
            s.close()
            ctx.term()
        return coord.returncode, out, err.decode(errors="replace"), keyed_ref.write_tsv(rows), answered

    # An empty keyed partial of count,sum:qty: magic, version 1, two aggregates (count 1, sum
    # 2), no entries, no pairs. What a map or reduce task of this job sends as its partial.
    EMPTY = b"DBKV\x01\x02\x01\x02" + b"\0" * 16

    def crafted(self, kind, s, m, stage, index, attempt, inputs):
        """Right names, a valid partial, damaged contents: map tasks answered with partition
        files that claim one entry and hold none. 1 if answered with files."""
        if m[10] != []:
            s.send(pack(7, stage, index, attempt, -3, "fake: no reduce tasks here"))
            return 0
        files = [["s0-m%d-p%d.kv" % (index, r), self.EMPTY[:8] + b"\x01" + b"\0" * 15] for r in range(3)]
        s.send(pack(6, stage, index, attempt, 1, 0, 10, 0.001, self.EMPTY, "", files))
        return 1

    def check(self, kind, needle):
        rc, out, err, want, answered = self.relayed_job(kind)
        self.assertTrue(answered, "the fake worker was given no relayed task")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, want)
        self.assertIn(needle, err)
        self.assertEqual([p for p in os.listdir(self.tmp) + os.listdir(self.path("job")) if "evil" in p], [])
        self.assertEqual(os.listdir(self.path("job", "spill")), [])

    def test_a_name_that_leaves_the_directory(self):
        self.check("climb", "relayed files are malformed")

    def test_files_of_another_task(self):
        self.check("other-task", "sent a bad result: an unexpected file 's0-m")

    def test_none_of_the_files_its_task_writes(self):
        self.check("none", "sent a bad result: 0 of the 3 files its task writes")

    def test_a_plain_result_for_a_relayed_task(self):
        self.check("no-field", "sent a bad result: no files, for a task whose outputs it was to send back")

    def test_a_relayed_reduce_task_said_lost(self):
        """Its inputs came with it: the claim is the worker's failure, retried elsewhere, and
        no map task runs again for it."""
        # its map tasks fail too (it cannot write them): not excluded for that before the reduce
        rc, out, err, want, answered = self.relayed_job("lost", ("--exclude-after", "16", "--max-attempts", "20"))
        self.assertTrue(answered, "the fake worker was given no relayed reduce task")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, want)
        self.assertIn("fake: an earlier stage's output is lost", err)
        self.assertNotIn("run again", err)

    def test_damaged_files_with_the_right_names(self):
        """They were written as they came: the reduce tasks that read them failed, and so did
        the job."""
        self.check("damaged", "sent a bad result: a damaged file 's0-m")


if __name__ == "__main__":
    unittest.main()
