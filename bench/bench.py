"""Benchmark queuectl against the floor: the same commands run by a thread pool.

Every scenario runs, in one process tree and one run, for queuectl and for its
baseline, interleaved (for each repetition: baseline, then queuectl), and the
table reports the median of the repetitions. Ratios, not absolute times, are
the results: they compare queuectl with what any Python program needs anyway.

* floor: ``concurrent.futures.ThreadPoolExecutor(P)`` calling
  ``subprocess.run(cmd, shell=True)`` for the same commands;
* one-shot baseline: ``python -c "import json, filelock"``, a Python start
  that imports what queuectl imports, timed the same way.

queuectl runs the way the installed ``queuectl`` command does: the console
script imports the module, whose bytecode pip compiled at install time (the
benchmark compiles a copy of the script once, in its temporary folder;
``python queuectl.py`` would compile the whole script on every start, about
25 ms here). It runs with ``--home DIR`` in a temporary folder that is removed at the end (also on Ctrl+C). After every
drain the jobs are counted in processed.json and queue.json; a lost or left
job makes the benchmark exit with code 1. Targets that are missed do not: the
exit code is 0 and the last line is a summary.

Peak memory is ru_maxrss of the worker, read with getrusage(RUSAGE_CHILDREN)
in a small wrapper process whose only child is the worker (ru_maxrss of
children is the largest of them, and the worker's own children are tiny
shells), so the benchmark's own memory does not count.

The history scenario writes a folder with a million finished jobs (completed, plus 1% dead and
1% cancelled) and times one-shot commands against it in absolute terms (the targets are 100 ms
and 50 MB for one job or a page of 20), because there is no floor for reading a history; a
prober process meanwhile takes and releases the data folder's lock every millisecond and
reports the longest it had to wait, which is how long the command held the lock at a stretch.

Standard library only:  python bench/bench.py [--quick] [--reps N] [--jobs N] [--history N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "queuectl.py")
PYTHON = sys.executable
BASELINE = [PYTHON, "-c", "import json, filelock"]
WORKERS = 4

# Runs one command and prints {"rc": ..., "maxrss_kb": ..., "seconds": ...}: RUSAGE_CHILDREN then
# covers that command (and its own children) only, and the time is the command's, not the wrapper's
# own Python start-up.
MAXRSS_WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "began = time.perf_counter()\n"
    "rc = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).returncode\n"
    "seconds = time.perf_counter() - began\n"
    "kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "kb = kb // 1024 if sys.platform == 'darwin' else kb\n"
    "print(json.dumps({'rc': rc, 'maxrss_kb': kb, 'seconds': seconds}))\n"
)


# Holds the data folder's lock (flock on the folder, as queuectl does on Linux and macOS) and
# releases it at once, every millisecond, until a line arrives on stdin; then prints the longest
# wait it had for the lock, in seconds. It says "ready" once it held the lock the first time.
LOCK_PROBER = (
    "import fcntl, os, sys, threading, time\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "done = threading.Event()\n"
    "threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()\n"
    "longest, first = 0.0, True\n"
    "while not done.is_set():\n"
    "    began = time.perf_counter()\n"
    "    fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "    longest = max(longest, time.perf_counter() - began)\n"
    "    fcntl.flock(fd, fcntl.LOCK_UN)\n"
    "    if first:\n"
    "        print('ready', flush=True)\n"
    "        first = False\n"
    "    time.sleep(0.001)\n"
    "print(longest, flush=True)\n"
)
LOCK_WAIT_MS = 20.0


class BenchError(Exception):
    """The benchmark itself went wrong (a command failed, a job was lost): exit 1."""


# --------------------------------------------------------------------------
# Child processes: tracked so that Ctrl+C kills every one of them
# --------------------------------------------------------------------------

_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()


def run(argv: list[str], what: str, capture: bool = False, check: bool = True,
        cwd: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Run argv to completion in its own session; (seconds, result)."""
    stdout = subprocess.PIPE if capture else subprocess.DEVNULL
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                            cwd=cwd, start_new_session=True)
    with _children_lock:
        _children.add(proc)
    try:
        out, err = proc.communicate()
    except BaseException:
        kill(proc)
        raise
    finally:
        with _children_lock:
            _children.discard(proc)
    elapsed = time.perf_counter() - start
    result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check and proc.returncode != 0:
        detail = err.decode("utf-8", "replace").strip()[-2000:]
        raise BenchError(f"{what} exited with code {proc.returncode}: {detail}")
    return elapsed, result


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of a child started by run(), and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            try:
                proc.kill()
            except OSError:
                pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def kill_children() -> None:
    with _children_lock:
        procs = list(_children)
    for proc in procs:
        kill(proc)


def remove_tree(path: str) -> None:
    """Remove the temporary folder; retry while a killed worker's last writes settle."""
    for attempt in range(20):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == 19:
                raise
            time.sleep(0.1)


def queuectl(home: str, *args: str) -> list[str]:
    """The command line of one queuectl process, as the installed console script runs it."""
    folder, module = os.path.split(SCRIPT)
    launcher = (f"import sys; sys.path.insert(0, {folder!r}); "
                f"from {module[:-3]} import main; sys.exit(main())")
    return [PYTHON, "-c", launcher, "--home", home, *args]


def compiled_copy(script: str, root: str) -> str:
    """A copy of the script, with its bytecode compiled next to it as pip does at install time,
    so that no run pays for compiling it (PYTHONDONTWRITEBYTECODE, a read-only checkout)."""
    import py_compile

    folder = os.path.join(root, "module")
    os.makedirs(folder)
    copy = os.path.join(folder, os.path.basename(script))
    for source in (script, os.path.join(os.path.dirname(script), "queuectl_pg.py")):
        if os.path.exists(source):  # the PostgreSQL store beside it, compiled the same way
            target = os.path.join(folder, os.path.basename(source))
            shutil.copyfile(source, target)
            py_compile.compile(target, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    return copy


def use_script(path: str) -> None:
    global SCRIPT
    SCRIPT = os.path.abspath(path)


def floor(commands: list[str], workers: int = WORKERS) -> float:
    """The floor: a thread pool running the same commands; seconds."""
    pool = ThreadPoolExecutor(workers)
    try:
        start = time.perf_counter()
        codes = list(pool.map(lambda cmd: subprocess.run(cmd, shell=True, check=False).returncode, commands))
        elapsed = time.perf_counter() - start
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    bad = [code for code in codes if code != 0]
    if bad:
        raise BenchError(f"the floor: {len(bad)} of {len(commands)} commands failed")
    return elapsed


# --------------------------------------------------------------------------
# Data folders
# --------------------------------------------------------------------------


class Workspace:
    """The temporary folder: job files and data folders, all under one root."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._n = 0

    def new_home(self, label: str) -> str:
        self._n += 1
        return os.path.join(self.root, f"{label}-{self._n}")

    def job_file(self, name: str, ids: list[str], delay: str | None = None,
                 then: list[str] | None = None) -> str:
        """A file of `true` jobs, one object per line; `delay` schedules `ids`, `then` follow due now."""
        path = os.path.join(self.root, name)
        with open(path, "w", encoding="utf-8") as handle:
            for job_id in ids:
                job = {"id": job_id, "command": "true"}
                if delay:
                    job["delay"] = delay
                handle.write(json.dumps(job) + "\n")
            for job_id in then or []:
                handle.write(json.dumps({"id": job_id, "command": "true"}) + "\n")
        return path


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def history_bytes(count: int, state: str = "completed") -> bytes:
    """A history file as queuectl writes it: a JSON array, one compact finished job per line, id first,
    finished a job every 2 s over the last 30 days (more jobs than fit go on at that pace)."""
    start = time.time() - 30 * 86400
    prefix = {"completed": "hist", "dead": "dead", "cancelled": "gone"}[state]
    lines = []
    for n in range(count):
        created = start + n * 2.0
        began = created + 0.5
        ended = began + 0.25
        job = {"id": f"{prefix}-{n:07d}", "command": f"echo done {n}", "state": state, "attempts": 1,
               "max_retries": 3, "priority": 0, "created_at": iso(created), "updated_at": iso(ended),
               "started_at": iso(began), "exit_code": 0 if state == "completed" else 1,
               "error": None if state == "completed" else "exit code 1", "output": f"done {n}\n",
               "finished_at": iso(ended)}
        lines.append(json.dumps(job, ensure_ascii=False, separators=(",", ":")))
    body = ",\n".join(lines)
    return ("[\n" + body + "\n]\n" if body else "[\n]\n").encode("utf-8")


def drain_span(home: str) -> float:
    """Seconds from the first attempt's start to the last attempt's end, from processed.json."""
    done = read_jobs(home, "processed.json")
    if not done:
        return 0.0

    def stamp(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    return max(stamp(j["finished_at"]) for j in done) - min(stamp(j["started_at"]) for j in done)


def read_jobs(home: str, name: str) -> list[dict[str, Any]]:
    path = os.path.join(home, name)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        value = json.loads(handle.read())
    if not isinstance(value, list):
        raise BenchError(f"{path} is not a JSON array")
    return value


def check_jobs(home: str, what: str, completed: set[str], pending: int = 0,
               other_completed: int = 0) -> dict[str, int]:
    """Every job ran exactly once: `completed` are in processed.json (with
    `other_completed` history jobs), and only `pending` jobs are left in queue.json."""
    done = read_jobs(home, "processed.json")
    left = read_jobs(home, "queue.json")
    dead = read_jobs(home, "failed.json")
    done_ids = [job["id"] for job in done]
    new = [job_id for job_id in done_ids if job_id in completed]
    problems = []
    if len(set(new)) != len(completed):
        problems.append(f"{len(completed) - len(set(new))} of {len(completed)} jobs are not in processed.json")
    if len(new) != len(set(new)):
        problems.append(f"{len(new) - len(set(new))} jobs are in processed.json twice")
    if len(done) != len(completed) + other_completed:
        problems.append(f"processed.json has {len(done)} jobs, expected {len(completed) + other_completed}")
    if any(job.get("state") != "completed" or job.get("exit_code") != 0 for job in done if job["id"] in completed):
        problems.append("some jobs did not complete with exit code 0")
    if len(left) != pending or any(job.get("state") != "pending" or job["id"] in completed for job in left):
        problems.append(f"queue.json has {len(left)} jobs, expected {pending} pending")
    if dead:
        problems.append(f"{len(dead)} jobs are in the DLQ")
    if problems:
        raise BenchError(f"{what}: jobs lost or left behind: " + "; ".join(problems))
    return {"expected": len(completed), "completed": len(new), "pending_left": len(left)}


# --------------------------------------------------------------------------
# PostgreSQL databases (--postgres URL)
# --------------------------------------------------------------------------


class Databases:
    """A fresh database per scenario on the server at `url`, all dropped at the end."""

    def __init__(self, url: str) -> None:
        import psycopg2  # only with --postgres

        self.url = url
        self.admin = psycopg2.connect(url)
        self.admin.autocommit = True
        self.made: list[str] = []

    def new(self) -> str:
        from urllib.parse import urlsplit, urlunsplit

        name = f"queuectl_bench_{os.getpid()}_{len(self.made) + 1}"
        with self.admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        self.made.append(name)
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path="/" + name))

    def query(self, url: str, sql: str) -> list[tuple[Any, ...]]:
        import psycopg2

        conn = psycopg2.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()

    def check_jobs(self, url: str, what: str, completed: set[str], pending: int = 0) -> dict[str, int]:
        """Every job ran exactly once (attempts 1, completed with exit code 0), `pending` left."""
        rows = self.query(url, "SELECT id, state, attempts, doc->>'exit_code' FROM queuectl.jobs")
        done = [r for r in rows if r[0] in completed and r[1] == "completed" and r[2] == 1 and r[3] == "0"]
        left = [r for r in rows if r[1] == "pending"]
        if len(done) != len(completed) or len(left) != pending:
            raise BenchError(f"{what}: {len(done)} of {len(completed)} jobs completed once, "
                             f"{len(left)} pending (expected {pending})")
        return {"expected": len(completed), "completed": len(done), "pending_left": len(left)}

    def close(self) -> None:
        with self.admin.cursor() as cur:
            for name in self.made:
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.admin.close()


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_n(number: float) -> str:
    return f"{number:,.0f}"


class Row:
    """One line of the table: a measured value against its target."""

    def __init__(self, key: str, title: str, value: float, op: str, limit: float, unit: str,
                 queuectl: str, baseline: str, shown: str, target: str, detail: dict[str, Any]) -> None:
        self.key, self.title, self.value, self.op, self.limit, self.unit = key, title, value, op, limit, unit
        self.queuectl, self.baseline, self.shown, self.target, self.detail = queuectl, baseline, shown, target, detail
        self.passed = value >= limit if op == ">=" else value <= limit

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "value": self.value, "unit": self.unit,
                "target": {"op": self.op, "limit": self.limit, "text": self.target},
                "pass": self.passed, "queuectl": self.queuectl, "baseline": self.baseline, "detail": self.detail}


class Bench:
    def __init__(self, ws: Workspace, sizes: dict[str, int], reps: int, runs: int,
                 say: Callable[[str], None]) -> None:
        self.ws = ws
        self.sizes = sizes
        self.reps = reps
        self.runs = runs
        self.say = say
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.counted: dict[str, list[dict[str, int]]] = {}
        self._loaded: str | None = None
        self._history: bytes | None = None
        self._export: str | None = None  # an export file of the history, made once
        self._seq = 0
        self.pg: Databases | None = None  # with --postgres
        self.only_postgres = False

    def unique(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._seq:06d}"

    def count(self, key: str, counts: dict[str, int]) -> None:
        self.counted.setdefault(key, []).append(counts)

    # -- building blocks ------------------------------------------------------

    def history(self) -> bytes:
        if self._history is None:
            self._history = history_bytes(self.sizes["history"])
        return self._history

    def loaded_home(self, due: int = 0) -> tuple[str, list[str]]:
        """A folder with `pending` jobs scheduled in 30 days (via enqueue --file), `due`
        jobs due now, and `history` completed jobs in processed.json (written directly)."""
        home = self.ws.new_home("loaded")
        later = [self.unique("later") for _ in range(self.sizes["pending"])]
        now = [self.unique("due") for _ in range(due)]
        path = self.ws.job_file(os.path.basename(home) + ".jobs", later, delay="30d", then=now)
        run(queuectl(home, "enqueue", "--file", path), "enqueue --file (setup)")
        with open(os.path.join(home, "processed.json"), "wb") as handle:
            handle.write(self.history())
        return home, now

    def shared_loaded_home(self) -> str:
        if self._loaded is None:
            self.say(f"  building a folder with {fmt_n(self.sizes['pending'])} pending and "
                     f"{fmt_n(self.sizes['history'])} completed jobs")
            self._loaded, _ = self.loaded_home()
        return self._loaded

    def drain(self, ids: list[str], label: str) -> tuple[float, str]:
        """enqueue --file, then worker start --count 4 --burst, timed end to end."""
        home = self.ws.new_home(label)
        path = self.ws.job_file(os.path.basename(home) + ".jobs", ids)
        t_enqueue, _ = run(queuectl(home, "enqueue", "--file", path), "enqueue --file")
        t_worker, _ = run(queuectl(home, "worker", "start", "--count", str(WORKERS), "--burst"), "worker --burst")
        return t_enqueue + t_worker, home

    # -- scenarios --------------------------------------------------------------

    def scenario_drain(self, key: str, jobs: int, target: float) -> None:
        self.say(f"{key}: drain {fmt_n(jobs)} jobs")
        floors, totals = [], []
        for rep in range(self.reps):
            ids = [self.unique("job") for _ in range(jobs)]
            floors.append(floor(["true"] * jobs))
            elapsed, home = self.drain(ids, key)
            totals.append(elapsed)
            self.count(key, check_jobs(home, f"{key} repetition {rep + 1}", set(ids)))
            self.say(f"  rep {rep + 1}: floor {fmt_s(floors[-1])}, queuectl {fmt_s(elapsed)}")
        f, q = median(floors), median(totals)
        ratio = (jobs / q) / (jobs / f)
        self.rows.append(Row(
            key, f"drain {fmt_n(jobs)} jobs: enqueue --file + worker --burst", ratio, ">=",
            target, "x floor", f"{fmt_s(q)}  {fmt_n(jobs / q)} jobs/s",
            f"floor {fmt_s(f)}  {fmt_n(jobs / f)} jobs/s", f"{ratio:.2f}x", f">= {target}x floor",
            {"jobs": jobs, "floor_s": floors, "queuectl_s": totals, "floor_jobs_per_s": jobs / f,
             "queuectl_jobs_per_s": jobs / q}))

    def scenario_overhead(self) -> None:
        due, pending = self.sizes["due"], self.sizes["pending"]
        key = "worker_overhead"
        self.say(f"{key}: worker --burst on {due} due jobs, alone and with {fmt_n(pending - due)} more scheduled")
        floors, small, large, span_small, span_large = [], [], [], [], []
        for rep in range(self.reps):
            ids_a = [self.unique("a") for _ in range(due)]
            home_a = self.ws.new_home("overhead-a")
            run(queuectl(home_a, "enqueue", "--file", self.ws.job_file("a.jobs", ids_a)), "enqueue (setup)")
            ids_b = [self.unique("b") for _ in range(due)]
            later = [self.unique("b-later") for _ in range(pending - due)]
            home_b = self.ws.new_home("overhead-b")
            run(queuectl(home_b, "enqueue", "--file", self.ws.job_file("b.jobs", later, "30d", ids_b)),
                "enqueue (setup)")
            worker = ("worker", "start", "--count", str(WORKERS), "--burst")
            floors.append(floor(["true"] * due))
            small.append(run(queuectl(home_a, *worker), "worker --burst")[0])
            large.append(run(queuectl(home_b, *worker), "worker --burst")[0])
            self.count(key, check_jobs(home_a, f"{key} A repetition {rep + 1}", set(ids_a)))
            self.count(key, check_jobs(home_b, f"{key} B repetition {rep + 1}", set(ids_b), pending=len(later)))
            span_small.append(drain_span(home_a))
            span_large.append(drain_span(home_b))
            self.say(f"  rep {rep + 1}: floor {fmt_s(floors[-1])}, {due} pending {fmt_s(small[-1])} "
                     f"(draining {fmt_s(span_small[-1])}), {fmt_n(pending)} pending {fmt_s(large[-1])} "
                     f"(draining {fmt_s(span_large[-1])})")
        f, a, b = median(floors), median(span_small), median(span_large)
        per_f, per_a, per_b = f / due, a / due, b / due
        ratio = per_b / per_a
        self.rows.append(Row(
            key, f"worker time per job: {fmt_n(pending)} pending vs {due}", ratio, "<=", 1.5,
            "x", f"{per_b * 1000:.2f} ms/job vs {per_a * 1000:.2f} ms/job",
            f"floor {per_f * 1000:.2f} ms/job", f"{ratio:.2f}x", "<= 1.5x",
            {"due": due, "pending": pending, "floor_s": floors, "small_s": small, "large_s": large,
             "small_drain_s": span_small, "large_drain_s": span_large}))
        whole_a, whole_b = median(small), median(large)
        self.notes.append(f"worker time per job is measured from the first attempt's start to the last one's end "
                          f"(the jobs' own started_at/finished_at); with the worker's start-up and exit it is "
                          f"{whole_a / due * 1000:.2f} ms with {due} pending and {whole_b / due * 1000:.2f} ms with "
                          f"{fmt_n(pending)} pending ({whole_b / whole_a:.2f}x): the start-up reads queue.json once")

    def one_shot(self, key: str, title: str, make: Callable[[], list[str]], limit: float) -> None:
        """`runs` alternating runs of the baseline and of the command per repetition; medians."""
        self.say(f"{key}: {title}")
        base_reps, q_reps = [], []
        for rep in range(self.reps):
            base, mine = [], []
            for _ in range(self.runs):
                base.append(run(BASELINE, "the baseline")[0])
                argv = make()
                mine.append(run(argv, " ".join(argv[3:]))[0])
            base_reps.append(median(base))
            q_reps.append(median(mine))
            self.say(f"  rep {rep + 1}: baseline {fmt_s(base_reps[-1])}, queuectl {fmt_s(q_reps[-1])}")
        b, q = median(base_reps), median(q_reps)
        ratio = q / b
        self.rows.append(Row(key, title, ratio, "<=", limit, "x baseline", fmt_s(q), f"import {fmt_s(b)}",
                             f"{ratio:.2f}x", f"<= {limit}x baseline",
                             {"runs_per_rep": self.runs, "baseline_s": base_reps, "queuectl_s": q_reps}))

    def scenario_enqueue_one(self) -> None:
        def into_empty() -> list[str]:
            home = self.ws.new_home("empty")
            os.makedirs(home)
            return queuectl(home, "enqueue", "--id", self.unique("one"), "--command", "true")

        self.one_shot("enqueue_one_empty", "enqueue --id X --command true, empty folder",
                      into_empty, 1.5)

        def as_script() -> list[str]:  # `python queuectl.py ...`: Python compiles a script on every run
            home = self.ws.new_home("script")
            os.makedirs(home)
            return [PYTHON, SCRIPT, "--home", home, "enqueue", "--id", self.unique("one"), "--command", "true"]

        self.one_shot("enqueue_one_script", "the same, run as python queuectl.py (not installed)", as_script, 3.0)
        loaded = self.shared_loaded_home()
        self.one_shot("enqueue_one_loaded", f"the same, {fmt_n(self.sizes['pending'])} pending + "
                      f"{fmt_n(self.sizes['history'])} completed",
                      lambda: queuectl(loaded, "enqueue", "--id", self.unique("one"), "--command", "true"), 1.5)

    def scenario_enqueue_file(self) -> None:
        def in_folder(home: str, ids: list[str]) -> int:
            left = read_jobs(home, "queue.json")
            return len(left) if {job["id"] for job in left} == set(ids) else -1

        self.enqueue_file("enqueue_file", "", lambda: self.ws.new_home("enqueue_file"), in_folder)

    def enqueue_file(self, key: str, where: str, new_home: Callable[[], str],
                     pending: Callable[[str, list[str]], int]) -> None:
        """enqueue --file of N jobs into an empty queue; `pending` counts the jobs it then holds."""
        jobs = self.sizes["large"]
        self.say(f"{key}: enqueue --file of {fmt_n(jobs)} jobs into an empty queue{where}")
        times = []
        for rep in range(self.reps):
            ids = [self.unique("file") for _ in range(jobs)]
            home = new_home()
            path = self.ws.job_file(f"{key}-{rep}.jobs", ids)
            times.append(run(queuectl(home, "enqueue", "--file", path), "enqueue --file")[0])
            held = pending(home, ids)
            if held != jobs:
                raise BenchError(f"{key}: the queue holds {held} of the {jobs} jobs (-1: others)")
            self.count(key, {"expected": jobs, "completed": 0, "pending_left": held})
            self.say(f"  rep {rep + 1}: {fmt_s(times[-1])}")
        t = median(times)
        self.rows.append(Row(key, f"enqueue --file of {fmt_n(jobs)} jobs{where}", t, "<=", 1.0, "s",
                             f"{fmt_s(t)}  {fmt_n(jobs / t)} jobs/s", "-", fmt_s(t), "<= 1 s",
                             {"jobs": jobs, "queuectl_s": times}))

    def scenario_read_commands(self) -> None:
        loaded = self.shared_loaded_home()
        where = f"{fmt_n(self.sizes['pending'])} pending + {fmt_n(self.sizes['history'])} completed"
        self.one_shot("status_loaded", f"status, {where}", lambda: queuectl(loaded, "status"), 2.0)
        self.one_shot("list_loaded", "list --state pending --limit 20, the same",
                      lambda: queuectl(loaded, "list", "--state", "pending", "--limit", "20"), 2.0)

    def scenario_memory(self) -> None:
        key, due = "worker_peak_memory", self.sizes["due"]
        self.say(f"{key}: worker --burst with {fmt_n(self.sizes['pending'])} scheduled, "
                 f"{fmt_n(self.sizes['history'])} completed and {due} due jobs")
        peaks = []
        for rep in range(self.reps):
            home, ids = self.loaded_home(due=due)
            _, result = run([PYTHON, "-c", MAXRSS_WRAPPER,
                             *queuectl(home, "worker", "start", "--count", str(WORKERS), "--burst")],
                            "the ru_maxrss wrapper", capture=True)
            report = json.loads(result.stdout)
            if report["rc"] != 0:
                raise BenchError(f"{key}: worker --burst exited with code {report['rc']}")
            peaks.append(report["maxrss_kb"] / 1024)
            self.count(key, check_jobs(home, f"{key} repetition {rep + 1}", set(ids), pending=self.sizes["pending"],
                                       other_completed=self.sizes["history"]))
            self.say(f"  rep {rep + 1}: {peaks[-1]:.1f} MB")
        peak = median(peaks)
        self.rows.append(Row(key, f"worker peak RSS, {fmt_n(self.sizes['pending'])} pending + "
                             f"{fmt_n(self.sizes['history'])} completed", peak, "<=", 60.0, "MB",
                             f"{peak:.1f} MB", "-", f"{peak:.1f} MB", "<= 60 MB",
                             {"peaks_mb": peaks, "method": "getrusage(RUSAGE_CHILDREN).ru_maxrss in a wrapper"}))

    def scenario_history(self) -> None:
        """One-shot commands against a long history: time, peak memory, and the longest wait for
        the lock that another process saw while each ran."""
        count = self.sizes["long_history"]
        home = self.ws.new_home("history")
        os.makedirs(home)
        self.say(f"history: writing {fmt_n(count)} completed, {fmt_n(count // 100)} dead and "
                 f"{fmt_n(count // 100)} cancelled jobs")
        for name, state, n in (("processed.json", "completed", count), ("failed.json", "dead", count // 100),
                               ("cancelled.json", "cancelled", count // 100)):
            with open(os.path.join(home, name), "wb") as handle:
                handle.write(history_bytes(n, state))
        os.makedirs(os.path.join(home, "logs"))
        middle = f"hist-{count // 2:07d}"
        with open(os.path.join(home, "logs", f"{middle}.log"), "w") as handle:
            handle.write(f"=== {middle} attempt 1 started 2026-01-01T00:00:00.000Z by Worker-1 (pid 1 on h), "
                         f"command pid 2   : 5 bytes of output follow\ndone\n\n=== attempt 1 ended: exit code 0\n")
        run(queuectl(home, "status"), "status")  # builds the caches (history.idx, the positions) once
        ids = {"first": "hist-0000000", "middle": middle, "last": f"hist-{count - 1:07d}"}
        half = f"{30 * 86400 - count:.0f}s"  # the first half of the completed jobs finished before
        one_shot = 100.0
        for key, title, args, limit_ms, limit_mb in (
                [(f"show_{where}", f"show of the {where} finished job", ["show", job_id], one_shot, 50.0)
                 for where, job_id in ids.items()]
                + [("logs_middle", "logs of a finished job", ["logs", middle], one_shot, 50.0),
                   ("cancel_finished", "cancel of a finished job", ["cancel", ids["first"]], one_shot, 50.0),
                   ("list_20", "list --limit 20", ["list", "--limit", "20"], one_shot, 50.0)]
                + [(f"list_20_{state}", f"list --state {state} --limit 20", ["list", "--state", state, "--limit", "20"],
                    one_shot, 50.0) for state in ("completed", "dead", "cancelled", "pending")]
                + [("stats_history", "stats", ["stats"], None, 100.0),
                   ("purge_dry", "purge of the older half (answering no)", ["purge", "--older-than", half],
                    None, 100.0)]):
            self.history_command(home, key, f"{title}, {fmt_n(count)} finished", args, limit_ms, limit_mb,
                                 reps=None if limit_ms else self.reps)  # the streaming ones take seconds
        copy = self.ws.new_home("purged")
        shutil.copytree(home, copy)
        os.sync()  # else the purge's one directory fsync (under the lock) waits for the copy's dirty pages
        self.history_command(copy, "purge_history", f"purge of the older half --yes, {fmt_n(count)} finished",
                             ["purge", "--older-than", half, "--yes"], None, 100.0, reps=1)
        left = read_jobs(copy, "processed.json")
        if abs(len(left) - count / 2) > count / 100:  # give or take the seconds since it was written
            raise BenchError(f"purge_history: {len(left)} of {count} completed jobs left")

    def history_command(self, home: str, key: str, title: str, args: list[str], limit_ms: float | None,
                        limit_mb: float, reps: int | None = None) -> None:
        """Median time and peak memory of one command; the longest lock wait a prober saw meanwhile."""
        self.say(f"{key}: {title}")
        times, peaks, waits = [], [], []
        for _ in range(reps or self.reps * self.runs):
            prober = subprocess.Popen([PYTHON, "-c", LOCK_PROBER, home], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, start_new_session=True)
            with _children_lock:
                _children.add(prober)
            try:
                prober.stdout.readline()  # it holds the lock once before it reports ready
                _, result = run([PYTHON, "-c", MAXRSS_WRAPPER, *queuectl(home, *args)], " ".join(args), capture=True)
                out, _ = prober.communicate(b"stop\n", timeout=30)
            finally:
                kill(prober)
                with _children_lock:
                    _children.discard(prober)
            report = json.loads(result.stdout)
            if report["rc"] not in (0, 1):
                raise BenchError(f"{key}: queuectl {' '.join(args)} exited with code {report['rc']}")
            times.append(report["seconds"])
            peaks.append(report["maxrss_kb"] / 1024)
            waits.append(float(out) * 1000)
        t, peak, wait = median(times) * 1000, median(peaks), max(waits)
        if limit_ms is not None:
            self.rows.append(Row(key, title, t, "<=", limit_ms, "ms", f"{t:.0f} ms", "-", f"{t:.0f} ms",
                                 f"<= {limit_ms:.0f} ms", {"seconds": times}))
        self.rows.append(Row(key + "_memory", f"{title}: peak memory", peak, "<=", limit_mb, "MB",
                             f"{peak:.1f} MB", "-", f"{peak:.1f} MB", f"<= {limit_mb:.0f} MB", {"peaks_mb": peaks}))
        self.rows.append(Row(key + "_lock", f"{title}: longest lock wait of another process", wait, "<=",
                             LOCK_WAIT_MS, "ms", f"{wait:.0f} ms", "-", f"{wait:.0f} ms", f"<= {LOCK_WAIT_MS:.0f} ms",
                             {"waits_ms": waits, "seconds": times}))

    # -- PostgreSQL ---------------------------------------------------------------

    def pg_drain(self, key: str, title: str, processes: int, threads: int, target: float) -> None:
        jobs = self.sizes["large"]
        self.say(f"{key}: drain {fmt_n(jobs)} jobs in PostgreSQL, {processes} worker process(es) x {threads} threads")
        floors, totals = [], []
        for rep in range(self.reps):
            ids = [self.unique("pg") for _ in range(jobs)]
            url = self.pg.new()
            run(queuectl(url, "status"), "status (creates the schema)")
            floors.append(floor(["true"] * jobs))
            path = self.ws.job_file(f"{key}-{rep}.jobs", ids)
            began = time.perf_counter()
            run(queuectl(url, "enqueue", "--file", path), "enqueue --file")
            workers = [threading.Thread(target=run, args=(queuectl(url, "worker", "start", "--count", str(threads),
                                                                   "--burst"), "worker --burst"))
                       for _ in range(processes)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            totals.append(time.perf_counter() - began)
            self.count(key, self.pg.check_jobs(url, f"{key} repetition {rep + 1}", set(ids)))
            self.say(f"  rep {rep + 1}: floor {fmt_s(floors[-1])}, queuectl {fmt_s(totals[-1])}")
        f, q = median(floors), median(totals)
        ratio = f / q
        self.rows.append(Row(key, title, ratio, ">=", target, "x floor", f"{fmt_s(q)}  {fmt_n(jobs / q)} jobs/s",
                             f"floor {fmt_s(f)}  {fmt_n(jobs / f)} jobs/s", f"{ratio:.2f}x", f">= {target}x floor",
                             {"jobs": jobs, "floor_s": floors, "queuectl_s": totals}))

    def pg_enqueue_one(self) -> None:
        """One enqueue into PostgreSQL against one into a folder, alternating, in the same run."""
        key = "pg_enqueue_one"
        self.say(f"{key}: enqueue --id X --command true, PostgreSQL vs a folder")
        url = self.pg.new()
        run(queuectl(url, "status"), "status (creates the schema)")
        folders, pgs = [], []
        for rep in range(self.reps):
            f, p = [], []
            for _ in range(self.runs):
                home = self.ws.new_home("pg-vs")
                os.makedirs(home)
                f.append(run(queuectl(home, "enqueue", "--id", self.unique("one"), "--command", "true"), "enqueue")[0])
                p.append(run(queuectl(url, "enqueue", "--id", self.unique("one"), "--command", "true"), "enqueue")[0])
            folders.append(median(f))
            pgs.append(median(p))
            self.say(f"  rep {rep + 1}: folder {fmt_s(folders[-1])}, PostgreSQL {fmt_s(pgs[-1])}")
        a, b = median(folders), median(pgs)
        self.rows.append(Row(key, "enqueue --id X --command true, PostgreSQL", b / a, "<=", 1.6, "x folder",
                             fmt_s(b), f"folder {fmt_s(a)}", f"{b / a:.2f}x", "<= 1.6x the folder's",
                             {"folder_s": folders, "postgres_s": pgs}))

    def pg_enqueue_file(self) -> None:
        def new_database() -> str:
            url = self.pg.new()
            run(queuectl(url, "status"), "status (creates the schema)")
            return url

        def in_database(url: str, ids: list[str]) -> int:
            (count,), = self.pg.query(url, "SELECT count(*) FROM queuectl.jobs WHERE state = 'pending'")
            return count

        self.enqueue_file("pg_enqueue_file", ", PostgreSQL", new_database, in_database)

    def pg_pickup(self) -> None:
        """An idle worker: from `enqueue` returning to the command starting, median of 20."""
        key, samples = "pg_pickup", 20
        self.say(f"{key}: an idle worker picks up a new job, {samples} times")
        url = self.pg.new()
        run(queuectl(url, "status"), "status (creates the schema)")
        worker = subprocess.Popen(queuectl(url, "worker", "start", "--count", "2"), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        with _children_lock:
            _children.add(worker)
        waits = []
        try:
            time.sleep(1.0)  # let it start and go idle (its start-up is not what is measured)
            for n in range(samples):
                mark = os.path.join(self.ws.root, f"pickup-{n}")
                run(queuectl(url, "enqueue", "--id", f"pickup-{n}", "--command", f"date +%s.%N > {mark}.tmp && "
                             f"mv {mark}.tmp {mark}"), "enqueue")
                returned = time.time()
                deadline = time.monotonic() + 10
                while not os.path.exists(mark) or not open(mark).read():
                    if time.monotonic() > deadline:
                        raise BenchError(f"{key}: job {n} did not start within 10 s")
                    time.sleep(0.002)
                waits.append(max(0.0, float(open(mark).read()) - returned))
        finally:
            run(queuectl(url, "worker", "stop", "--wait"), "worker stop", check=False)
            kill(worker)
            with _children_lock:
                _children.discard(worker)
        w = median(waits) * 1000
        self.rows.append(Row(key, "an idle worker picks up a new job (enqueue returns -> command starts), PostgreSQL",
                             w, "<=", 50.0, "ms", f"{w:.0f} ms", "-", f"{w:.0f} ms", "<= 50 ms",
                             {"waits_s": waits, "note": "the job's first act is `date`; its start-up is included"}))

    def pg_reads(self) -> None:
        """status and list against 10,000 pending + 100,000 finished, against the folder's."""
        pending, history = self.sizes["pending"], self.sizes["history"]
        self.say(f"pg_reads: status and list with {fmt_n(pending)} pending + {fmt_n(history)} completed")
        url = self.pg.new()
        later = [self.unique("later") for _ in range(pending)]
        run(queuectl(url, "enqueue", "--file", self.ws.job_file("pg-later.jobs", later, delay="30d")), "enqueue")
        done = [json.loads(line.rstrip(b",")) for line in self.history().splitlines()[1:-1]]
        import psycopg2

        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:
            for start in range(0, len(done), 10_000):
                batch = done[start:start + 10_000]
                rows = b",".join(cur.mogrify("(%s, 'completed', 0, false, to_timestamp(%s), 1, %s::json, "
                                             "nextval('queuectl.places'))",
                                             (j["id"], datetime.fromisoformat(j["finished_at"][:-1]).replace(
                                                 tzinfo=timezone.utc).timestamp(), json.dumps(j))) for j in batch)
                cur.execute(b"INSERT INTO queuectl.jobs (id, state, priority, ready, finished_at, attempts, doc, "
                            b"place) VALUES " + rows)
        conn.close()
        folder = self.shared_loaded_home()
        for key, title, args in (("pg_status", "status", ["status"]),
                                 ("pg_list", "list --state pending --limit 20", ["list", "--state", "pending",
                                                                                  "--limit", "20"])):
            self.say(f"{key}: {title}, PostgreSQL vs the folder")
            a_reps, b_reps = [], []
            for _ in range(self.reps):
                a, b = [], []
                for _ in range(self.runs):
                    a.append(run(queuectl(folder, *args), title)[0])
                    b.append(run(queuectl(url, *args), title)[0])
                a_reps.append(median(a))
                b_reps.append(median(b))
            a, b = median(a_reps), median(b_reps)
            self.rows.append(Row(key, f"{title}, {fmt_n(pending)} pending + {fmt_n(history)} finished, PostgreSQL",
                                 b / a, "<=", 2.0, "x folder", fmt_s(b), f"folder {fmt_s(a)}", f"{b / a:.2f}x",
                                 "<= 2x the folder's", {"folder_s": a_reps, "postgres_s": b_reps}))

    def pg_claim_delayed(self) -> None:
        """A worker round that claims one due job, with 10 x N jobs due later in the table: the
        claim index holds due jobs only, so they must not slow it down (median of 50 rounds)."""
        key, delayed = "pg_claim_delayed", 10 * self.sizes["large"]
        self.say(f"{key}: a round that claims one job, with {fmt_n(delayed)} jobs due later")
        later = [{"id": self.unique("later"), "command": "true", "delay": "30d"} for _ in range(delayed)]
        t = self.round_time(key, self.pg.new(), later) * 1000
        self.rows.append(Row(key, f"a worker round claiming 1 job, {fmt_n(delayed)} jobs due later, PostgreSQL",
                             t, "<=", 5.0, "ms", f"{t:.2f} ms", "-", f"{t:.2f} ms", "<= 5 ms",
                             {"delayed": delayed, "rounds": 50}))

    def round_time(self, key: str, location: str, jobs: list[dict[str, Any]]) -> float:
        """The median time of 50 worker rounds that each claim one job, in a queue that holds `jobs`
        and 50 due ones (enqueued with enqueue --file); seconds."""
        jobs = jobs + [{"id": self.unique("due"), "command": "true"} for _ in range(50)]
        path = os.path.join(self.ws.root, f"{key}.jobs")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(jobs, handle)
        run(queuectl(location, "enqueue", "--file", path), "enqueue --file (setup)")
        probe = (f"import sys, time, statistics; sys.path.insert(0, {os.path.dirname(SCRIPT)!r})\n"
                 "import queuectl\n"
                 f"store = queuectl.open_store({location!r}); worker = queuectl.WorkerIdentity()\n"
                 "store.worker_round([], 0, worker)  # a worker's first round reads the whole queue\n"
                 "times = []\n"
                 "for _ in range(50):\n"
                 "    began = time.perf_counter(); _, claimed, _ = store.worker_round([], 1, worker)\n"
                 "    times.append(time.perf_counter() - began); assert len(claimed) == 1\n"
                 "print(statistics.median(times))\n")
        _, result = run([PYTHON, "-c", probe], "the claim probe", capture=True)
        return float(result.stdout)

    def waiting_jobs(self) -> list[dict[str, Any]]:
        """N jobs that wait (`after`) for a job due in 30 days."""
        gate = self.unique("gate")
        return [{"id": gate, "command": "true", "delay": "30d"}] + [
            {"id": self.unique("waits"), "command": "true", "after": [gate]} for _ in range(self.sizes["large"])]

    def claim_waiting_folder(self) -> None:
        """In a folder every round rewrites queue.json, so N waiting jobs are compared with N
        jobs due later: waiting ones must cost the claim no more."""
        key, n = "claim_waiting", self.sizes["large"]
        self.say(f"{key}: a round that claims one job, {fmt_n(n)} jobs waiting vs {fmt_n(n)} due later, folder")
        waiting = self.round_time(key, self.ws.new_home("waiting"), self.waiting_jobs())
        later = self.round_time(key, self.ws.new_home("later"), [
            {"id": self.unique("later"), "command": "true", "delay": "30d"} for _ in range(n + 1)])
        self.rows.append(Row(key, f"a worker round claiming 1 job, {fmt_n(n)} jobs waiting (after) vs due later",
                             waiting / later, "<=", 1.2, "x", f"{waiting * 1000:.2f} ms", f"{later * 1000:.2f} ms",
                             f"{waiting / later:.2f}x", "<= 1.2x", {"waiting_s": waiting, "later_s": later}))

    def export_file(self) -> str:
        """An export of a folder holding the history (10 x N finished jobs), timed once; its path."""
        if self._export is None:
            key, n = "export", self.sizes["history"]
            self.say(f"{key}: export of {fmt_n(n)} finished jobs, and their import")
            home = self.ws.new_home("export")
            os.makedirs(home)
            with open(os.path.join(home, "processed.json"), "wb") as handle:
                handle.write(self.history())
            path = os.path.join(self.ws.root, "export.jsonl")
            t, _ = run(queuectl(home, "export", "--file", path), "export")
            self.rows.append(Row(key, f"export --file of {fmt_n(n)} finished jobs", t, "<=", 5.0, "s", fmt_s(t), "-",
                                 fmt_s(t), "<= 5 s", {"jobs": n}))
            self._export = path
        return self._export

    def import_into(self, key: str, location: str, where: str) -> None:
        path, n = self.export_file(), self.sizes["history"]
        t, result = run(queuectl(location, "import", path), "import", capture=True)
        if result.stdout.decode().strip() != f"Imported {n} job(s).":
            raise BenchError(f"import into {where} said {result.stdout!r}")
        self.rows.append(Row(key, f"import of {fmt_n(n)} finished jobs, {where}", t, "<=", 5.0, "s", fmt_s(t), "-",
                             fmt_s(t), "<= 5 s", {"jobs": n}))

    def claim_waiting_postgres(self) -> None:
        key, n = "pg_claim_waiting", self.sizes["large"]
        self.say(f"{key}: a round that claims one job, with {fmt_n(n)} jobs waiting for another, PostgreSQL")
        t = self.round_time(key, self.pg.new(), self.waiting_jobs()) * 1000
        self.rows.append(Row(key, f"a worker round claiming 1 job, {fmt_n(n)} jobs waiting (after), PostgreSQL",
                             t, "<=", 5.0, "ms", f"{t:.2f} ms", "-", f"{t:.2f} ms", "<= 5 ms", {"waiting": n}))

    def run_postgres(self) -> None:
        self.pg_drain("pg_drain_one", f"drain {fmt_n(self.sizes['large'])} jobs, PostgreSQL, 1 worker x 4 threads",
                      1, 4, 0.6)
        self.pg_drain("pg_drain_two", f"drain {fmt_n(self.sizes['large'])} jobs, PostgreSQL, 2 workers x 2 threads",
                      2, 2, 0.6)
        self.pg_enqueue_one()
        self.pg_enqueue_file()
        self.pg_pickup()
        self.pg_reads()
        self.pg_claim_delayed()
        self.claim_waiting_postgres()
        self.import_into("pg_import", self.pg.new(), "PostgreSQL")

    def run_all(self) -> None:
        if self.pg is not None and self.only_postgres:
            self.run_postgres()
            return
        self.scenario_drain("drain_small", self.sizes["small"], 0.8)
        self.scenario_drain("drain_large", self.sizes["large"], 0.7)
        self.scenario_overhead()
        self.scenario_enqueue_one()
        self.scenario_enqueue_file()
        self.scenario_read_commands()
        self.scenario_memory()
        self.scenario_history()
        self.claim_waiting_folder()
        self.import_into("import", self.ws.new_home("import"), "folder")
        if self.pg is not None:
            self.run_postgres()


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    headers = ["scenario", "queuectl", "baseline", "result", "target", "status"]
    cells = [[r.title, r.queuectl, r.baseline, r.shown, r.target, "PASS" if r.passed else "FAIL"] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = []
    for row in [headers, ["-" * w for w in widths]] + cells:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    failed = [r.key for r in rows if not r.passed]
    text = f"SUMMARY: {len(rows) - len(failed)} of {len(rows)} targets met"
    return text + (f"; FAIL: {', '.join(failed)}" if failed else "; all PASS")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.py", description=__doc__.split("\n\n")[0],
        epilog="Scenarios: drain of N/10 and N jobs, worker overhead with N pending vs 100, one enqueue "
               "into an empty and a loaded folder, enqueue --file of N jobs, status and list on a loaded "
               "folder, worker peak memory; and with a long history (--history, 1,000,000 finished jobs): "
               "show, logs, cancel and list --limit 20 (time, peak memory), stats and purge (peak memory), "
               "and for each the longest wait for the lock that another process saw meanwhile. N is 10,000 "
               "unless --jobs or --quick; a loaded folder has N pending and 10 x N completed jobs. Exit "
               "code 0 whatever the targets; 1 if a job was lost.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (50/200 jobs, 200 pending, 1,000 completed), 1 repetition: every "
                             "scenario, for the test suite")
    parser.add_argument("--reps", type=int, metavar="N", help="repetitions (default 3, 1 with --quick)")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="the large job count N (default 10,000); the small drain is N/10, the history 10 x N")
    parser.add_argument("--runs", type=int, metavar="N",
                        help="runs of each one-shot command per repetition (default 10, 3 with --quick)")
    parser.add_argument("--history", type=int, metavar="N",
                        help="finished jobs for the history scenario (default 1,000,000, 10,000 with --quick)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only (progress on stderr)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--postgres", metavar="URL",
                        help="also run the PostgreSQL scenarios, each in a new database on this server "
                             "(e.g. postgresql://postgres@127.0.0.1:5432/test; needs psycopg2)")
    parser.add_argument("--only-postgres", action="store_true", help="with --postgres: only its scenarios")
    parser.add_argument("--script", metavar="PATH", default=SCRIPT,
                        help="the queuectl.py to measure (default: the one next to bench/), e.g. an older copy")
    args = parser.parse_args(argv)
    for name in ("reps", "jobs", "runs", "history"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be 1 or more")
    return args


def sizes_for(args: argparse.Namespace) -> dict[str, int]:
    if args.jobs is not None:
        n = args.jobs
        sizes = {"small": max(1, n // 10), "large": n, "pending": max(n, 2), "history": 10 * n}
    elif args.quick:
        sizes = {"small": 50, "large": 200, "pending": 200, "history": 1000}
    else:
        sizes = {"small": 1000, "large": 10_000, "pending": 10_000, "history": 100_000}
    sizes["due"] = max(1, min(100, sizes["pending"] // 4))
    sizes["long_history"] = args.history or (10_000 if args.quick else 1_000_000)
    return sizes


def _interrupt(number: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("SIGTERM", "SIGHUP"):  # clean up as on Ctrl+C
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _interrupt)
    use_script(args.script)
    sizes = sizes_for(args)
    reps = args.reps or (1 if args.quick else 3)
    runs = args.runs or (3 if args.quick else 10)

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    say(f"queuectl benchmark: {reps} repetition(s), sizes {sizes}, python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs")
    started = time.perf_counter()
    root = tempfile.mkdtemp(prefix="queuectl-bench-")
    use_script(compiled_copy(args.script, root))
    bench = Bench(Workspace(root), sizes, reps, runs, say)
    try:
        try:
            if args.postgres:
                bench.pg = Databases(args.postgres)
                bench.only_postgres = args.only_postgres
            bench.run_all()
        finally:
            if bench.pg is not None:
                bench.pg.close()
            # No second Ctrl+C while cleaning up: kill the children, then remove the folder.
            handlers = {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)}
            try:
                kill_children()
                remove_tree(root)
            finally:
                for number, handler in handlers.items():
                    signal.signal(number, handler)
    except BenchError as error:
        print(f"bench.py: FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.py: interrupted; child processes killed, temporary folder removed", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps({
            "sizes": sizes, "reps": reps, "runs": runs, "workers": WORKERS, "python": platform.python_version(),
            "cpus": os.cpu_count(), "seconds": elapsed, "rows": [r.as_json() for r in bench.rows],
            "counted": bench.counted, "notes": bench.notes,
            "all_pass": all(r.passed for r in bench.rows), "summary": summary(bench.rows)}, indent=2))
        return 0
    print(f"queuectl benchmark: median of {reps} interleaved repetition(s); floor = ThreadPoolExecutor({WORKERS}) "
          f"+ subprocess.run(cmd, shell=True); baseline = python -c \"import json, filelock\" "
          f"(median of {runs} runs)")
    print(table(bench.rows))
    for note in bench.notes:
        print(f"note: {note}")
    jobs = sum(c["expected"] for counts in bench.counted.values() for c in counts)
    print(f"every job was counted ({fmt_n(jobs)} jobs in {sum(map(len, bench.counted.values()))} checks); "
          f"took {elapsed:.0f} s")
    print(summary(bench.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
