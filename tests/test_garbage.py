"""Garbage in: hypothesis-generated command lines for every subcommand.

Whatever the arguments, files or stdin hold, queuectl must never print a traceback:
the exit code is 0, 1 or 2; a failure (exit 1) is exactly one stderr line starting
with "error:"; and a command that failed leaves every state file byte-identical.
Everything runs in-process through queuectl.main in a copy of a seeded data folder.

The commands whose documented outcomes go beyond that are checked for exactly those:
`cancel` (one error line per id it could not cancel; a pending job it cancelled moves to
cancelled.json), `purge --yes` (only finished jobs of the asked states and age leave their
files, with their logs), and `wait` (exit 1 when a job ended dead or cancelled, 124 on a
timeout; it never writes). `logs --follow` and `wait` are never pointed at a job that can
block them: no worker runs here, so the seeded pending job never finishes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import queuectl
from conftest import SCRIPT

SETTINGS = settings(max_examples=int(os.environ.get("GARBAGE_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=list(HealthCheck))
JOB_FILES = (queuectl.QUEUE_FILE, queuectl.PROCESSED_FILE, queuectl.FAILED_FILE, queuectl.CANCELLED_FILE)
STATE_FILES = (*JOB_FILES, queuectl.CONFIG_FILE, queuectl.STOP_FILE)
DEAD_LOG = os.path.join(queuectl.LOGS_DIR, "dead1.log")  # the one log in the seed (purge removes logs)
SNAPSHOT_FILES = (*STATE_FILES, DEAD_LOG)
SEEDED = {"done1": "completed", "dead1": "dead", "pending1": "pending", "cancelled1": "cancelled"}
DEEP = 10_000

# -- strategies ---------------------------------------------------------------------

SPECIAL_TEXT = [
    "", " ", "\t", "\n", "\r\n", "\x00", "a\x00b", "\x1b[31mred", "\x7f", "\u202e", "\ufeff", "\udcff", "\ud800",
    "NaN", "nan", "-nan", "Infinity", "-Infinity", "inf", "-inf", "1e308", "1e999", "-1e999", "0x10", "1_000",
    "-1", "-0", "0", "+5", " 7 ", "1.5", "2**64", str(2**63), str(-(2**63)), "9" * 400, "-" + "9" * 400,
    "../x", "../../etc/passwd", "..", ".", "/", "\\..\\x", "a/../b", "CON", "NUL", "COM1", "LPT1", "con.txt",
    "AUX", "PRN", "nul.json", "x" * 64, "x" * 65, "x" * 100_000, "é" * 10_000, "-", "--", "--help",
    "pending", "dead", "dlq", "processed", "max_retries", "max-retries", "MAX_RETRIES ",
]

garbage = st.one_of(
    st.sampled_from(SPECIAL_TEXT),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec=None, blacklist_categories=()), max_size=40),  # controls, surrogates
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
maybe = st.none() | garbage
seeded_ids = st.sampled_from(sorted(SEEDED))
counts = st.integers(-2, 5).map(str)  # --tail, --attempt: mostly sensible, some not
durations = st.sampled_from(["0", "0s", "1", "2.5", "90s", "5m", "2h", "1d", "1000000000", "1000000001", "1e9",
                             "-1", "1 d", " 7 "])
ids = st.one_of(garbage, st.from_regex(queuectl.ID_PATTERN, fullmatch=True),
                st.sampled_from(["pending1", "done1", "dead1", "cancelled1", "CON", "NUL", "COM1", "../pending1"]))

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30),
                      st.floats(allow_nan=True, allow_infinity=True), garbage)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(garbage, inner, max_size=4), max_leaves=12)
job_like = st.fixed_dictionaries({}, optional={
    "id": st.one_of(ids, json_value), "command": st.one_of(garbage, json_value),
    "priority": json_leaf, "max_retries": json_leaf, "run_at": json_leaf, "delay": json_leaf,
    "timeout": json_leaf, "state": json_leaf, "attempts": json_leaf, "created_at": json_leaf,
})


def _shell_mangled(job: dict[str, Any]) -> str:
    """The forms shells turn JSON into: doubled quotes, escaped quotes, quotes stripped."""
    text = json.dumps(job)
    return text.replace('"', '""') if len(text) % 3 == 0 else (
        text.replace('"', '\\"') if len(text) % 3 == 1 else text.replace('"', ""))


json_text = st.one_of(
    garbage,
    json_value.map(json.dumps),
    job_like.map(json.dumps),
    st.lists(job_like, max_size=3).map(json.dumps),
    st.lists(job_like, min_size=2, max_size=3).map(lambda jobs: "\n".join(map(json.dumps, jobs))),
    job_like.map(_shell_mangled),
    st.sampled_from([
        "[" * DEEP + "]" * DEEP,
        '{"a":' * DEEP + "1" + "}" * DEEP,
        '{"id":"deep","command":' + "[" * DEEP + "]" * DEEP + "}",
        '{""id"":""deep"",""command"":' + "[" * DEEP + "]" * DEEP + "}",
        "[" * DEEP,
        '{"id":"j1","command":"true"}\n' + "[" * DEEP,
        "{id:j1,command:true}", "{id:CON,command:}", "{id:../x,command:true,priority:NaN}",
        '{"id":"j1","command":"true","priority":NaN}', '{"id":"j1","command":"true","delay":Infinity}',
        '{"id":"j1","command":"true","timeout":-Infinity}', '{"id":"j1","command":"true","priority":1e400}',
        '{"id":"pending1","command":"true"}', '[{"id":"a1","command":"true"},{"id":"a1","command":"true"}]',
        "[]", "{}", "null", "1", '"x"',
    ]),
)

file_bytes = st.one_of(
    st.binary(max_size=200),
    json_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_text.map(lambda t: t.encode("utf-16-le", "surrogatepass")),  # UTF-16 without a BOM
    json_text.map(lambda t: t.encode("utf-16-be", "surrogatepass")),
    json_text.map(lambda t: t.encode("utf-16", "surrogatepass")),  # with a BOM
    json_text.map(lambda t: b"\xef\xbb\xbf" + t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"\xff", b"\xc3\x28", b'{"id":"a","command":"\xff"}', b"\xff\xfe{\x00", b"\xfe\xff\x00",
                     b"\x00" * 100, b"\xed\xa0\x80", '{"id":"u","command":"true"}'.encode("utf-16-le")]),
)

# -- the seeded data folder and the property ---------------------------------------------


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with a completed job (done1), a dead one (dead1, with a log), a pending
    one (pending1) and a cancelled one (cancelled1)."""
    home = tmp_path_factory.mktemp("seed") / "data"
    for argv in (["config", "set", "max_retries", "0"], ["config", "set", "poll_interval", "0.05"],
                 ["enqueue", "--id", "done1", "--command", "true"],
                 ["enqueue", "--id", "dead1", "--command", "false"]):
        assert queuectl.main(["--home", str(home), *argv]) == 0
    subprocess.run([sys.executable, SCRIPT, "--home", str(home), "worker", "start", "--burst"],
                   check=True, capture_output=True, timeout=60)
    for argv in (["enqueue", "--id", "pending1", "--command", "true"],
                 ["enqueue", "--id", "cancelled1", "--command", "true"], ["cancel", "cancelled1"]):
        assert queuectl.main(["--home", str(home), *argv]) == 0
    states = {job["id"]: job["state"] for name in JOB_FILES
              for job in json.loads((home / name).read_text("utf-8"))}
    assert states == SEEDED, states
    assert (home / DEAD_LOG).is_file()
    return home


def snapshot(home: Path) -> dict[str, bytes | None]:
    return {name: (home / name).read_bytes() if (home / name).exists() else None for name in SNAPSHOT_FILES}


def jobs_in(data: bytes | None) -> list[dict[str, Any]]:
    return json.loads(data) if data is not None else []


class FakeStdin:
    """stdin holding `data`; not a terminal unless `tty` (then `input()` reads a line of it)."""

    def __init__(self, data: bytes, tty: bool = False) -> None:
        self.buffer = io.BytesIO(data)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def readline(self, size: int = -1) -> str:
        return self.buffer.readline(size).decode("utf-8", "replace")


def open_fds() -> set[int]:
    """This process's open file descriptors (none where the system cannot say). The listing's
    own descriptor is closed by the time it is checked, so it is left out."""
    try:
        names = os.listdir("/dev/fd")
    except OSError:
        return set()
    result = set()
    for name in names:
        try:
            os.fstat(int(name))
        except (OSError, ValueError):
            continue
        result.add(int(name))
    return result


def close_leftovers(home: Path, before: set[int]) -> None:
    """queuectl keeps its lock file (one per data folder, for the life of the process) and each
    Store's queue.json open; main() in-process leaves them open, and hundreds of examples, each in
    its own folder, would run into a low open-file limit (256 by default on macOS)."""
    queuectl.FolderStore._process_locks.pop(os.path.join(str(home), queuectl.LOCK_FILE), None)
    for fd in open_fds() - before:
        try:
            os.close(fd)
        except OSError:
            pass


class Run:
    """What one command did: its exit code, output, and the files before and after."""

    def __init__(self, args: list[str], code: Any, out: str, err: str, before: dict, after: dict) -> None:
        self.args, self.code, self.out, self.err, self.before, self.after = args, code, out, err, before, after

    def error_lines(self) -> list[str]:
        return [line for line in self.err.split("\n") if line.strip()]

    def unchanged(self, what: str = "a failed command changed state files") -> None:
        assert self.after == self.before, f"{what}: {self.args!r}"


def usual(run: Run) -> None:
    """The property every command keeps: exit 0, 1 or 2; a failure is one error line and no change."""
    assert run.code in (0, 1, 2), (run.code, run.args, run.err)
    if run.code != 0:
        if run.code == 1:
            lines = run.error_lines()
            assert len(lines) == 1 and lines[0].startswith("error:"), (run.args, run.err)
        run.unchanged()


def check(seed: Path, capsys: pytest.CaptureFixture, args: list[str], stdin: bytes | None = None,
          effect: Callable[[Run], None] = usual, tty: bool = False,
          prepare: Callable[[Path], None] | None = None) -> Run:
    """Run `queuectl --home COPY ARGS` in a fresh copy of the seed (changed by `prepare`), check
    that it printed no traceback, then check `effect` (by default the usual property)."""
    work = Path(tempfile.mkdtemp(prefix="garbage-"))
    home = work / "data"
    shutil.copytree(seed, home)
    if prepare is not None:
        prepare(home)
    before = snapshot(home)
    old_stdin = sys.stdin
    capsys.readouterr()
    try:
        if stdin is not None:
            sys.stdin = FakeStdin(stdin, tty)  # type: ignore[assignment]
        fds = open_fds()
        try:
            code = queuectl.main(["--home", str(home), *args])
        except SystemExit as exit_:
            code = exit_.code
            assert code in (0, 2), f"SystemExit({code!r}) for {args!r}"
        finally:
            close_leftovers(home, fds)
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "Traceback" not in out, err
        run = Run(args, code, out, err, before, snapshot(home))
        effect(run)
        return run
    finally:
        sys.stdin = old_stdin
        shutil.rmtree(work, ignore_errors=True)


def opts(**values: Any) -> list[str]:
    """--flag value pairs for the values that are not None."""
    return [part for name, value in values.items() if value is not None
            for part in ("--" + name.replace("_", "-"), value)]


# -- the tests ----------------------------------------------------------------------------


@SETTINGS
@example(id_="s1", command="echo \udcff", priority=None, max_retries=None, delay=None, run_at=None, timeout=None)
@given(id_=st.none() | ids, command=st.one_of(maybe, garbage.map("echo {}".format)), priority=maybe,
       max_retries=maybe, delay=maybe, run_at=maybe, timeout=maybe)
def test_enqueue_flags(seed: Path, capsys: pytest.CaptureFixture, id_: str | None, command: str | None,
                       priority: str | None, max_retries: str | None, delay: str | None, run_at: str | None,
                       timeout: str | None) -> None:
    check(seed, capsys, ["enqueue", *opts(id=id_, command=command, priority=priority, max_retries=max_retries,
                                          delay=delay, run_at=run_at, timeout=timeout)])


@SETTINGS
@example(text="{id:}", positional=False, id_=None, priority=None, delay=None, run_at=None, timeout=None)
@given(text=json_text, positional=st.booleans(), id_=st.none() | ids, priority=maybe, delay=maybe,
       run_at=maybe, timeout=maybe)
def test_enqueue_json(seed: Path, capsys: pytest.CaptureFixture, text: str, positional: bool, id_: str | None,
                      priority: str | None, delay: str | None, run_at: str | None, timeout: str | None) -> None:
    job = ["--", text] if positional else ["--json", text]
    check(seed, capsys, ["enqueue", *opts(id=id_, priority=priority, delay=delay, run_at=run_at,
                                          timeout=timeout), *job])


@SETTINGS
@given(data=file_bytes, how=st.sampled_from(["file", "stdin", "json-stdin"]))
def test_enqueue_file(seed: Path, capsys: pytest.CaptureFixture, tmp_path_factory: pytest.TempPathFactory,
                      data: bytes, how: str) -> None:
    if how == "file":
        path = tmp_path_factory.mktemp("input") / "jobs.json"
        path.write_bytes(data)
        check(seed, capsys, ["enqueue", "--file", str(path)])
    else:
        check(seed, capsys, ["enqueue", "--file" if how == "stdin" else "--json", "-"], stdin=data)


def test_enqueue_a_50_mb_file(seed: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b'{"id":"big","command":"' + b"x" * (50 * 1024 * 1024) + b'"')  # no closing brace
    check(seed, capsys, ["enqueue", "--file", str(path)])
    check(seed, capsys, ["enqueue", "--file", "-"], stdin=path.read_bytes())


@SETTINGS
@given(state=maybe, limit=maybe, as_json=st.booleans())
def test_list(seed: Path, capsys: pytest.CaptureFixture, state: str | None, limit: str | None,
              as_json: bool) -> None:
    check(seed, capsys, ["list", *opts(state=state, limit=limit), *(["--json"] if as_json else [])])


@SETTINGS
@example(job_id="\udcff", as_json=False)
@given(job_id=ids, as_json=st.booleans())
def test_show(seed: Path, capsys: pytest.CaptureFixture, job_id: str, as_json: bool) -> None:
    check(seed, capsys, ["show", *(["--json"] if as_json else []), "--", job_id])


@SETTINGS
@example(job_ids=["\udcff"], all_=False)
@given(job_ids=st.lists(ids, max_size=4), all_=st.booleans())
def test_dlq_retry(seed: Path, capsys: pytest.CaptureFixture, job_ids: list[str], all_: bool) -> None:
    check(seed, capsys, ["dlq", "retry", *(["--all"] if all_ else []), "--", *job_ids])


keys = st.one_of(st.sampled_from(list(queuectl.DEFAULT_CONFIG)), st.sampled_from(
    ["max-retries", " Backoff-Base ", "POLL_INTERVAL", "failure-rate", "job timeout"]), garbage)


@SETTINGS
@given(key=keys, value=garbage, action=st.sampled_from(["get", "set", "show"]), as_json=st.booleans())
def test_config(seed: Path, capsys: pytest.CaptureFixture, key: str, value: str, action: str,
                as_json: bool) -> None:
    flag = ["--json"] if as_json else []
    args = {"get": [*flag, "--", key], "set": ["--", key, value], "show": flag}[action]
    check(seed, capsys, ["config", action, *args])


@SETTINGS
@given(argv=st.sampled_from([["status"], ["status", "--json"], ["worker", "stop"], ["dlq", "list"],
                             ["dlq", "list", "--json"]]), extra=st.lists(garbage, max_size=2))
def test_status_and_worker_stop(seed: Path, capsys: pytest.CaptureFixture, argv: list[str],
                                extra: list[str]) -> None:
    check(seed, capsys, [*argv, *extra])


# -- logs, cancel, purge, stats, wait ------------------------------------------------------


def read_only(run: Run) -> None:
    """The usual property, and no change even on success."""
    usual(run)
    run.unchanged("a read-only command changed state files")


@SETTINGS
@example(job_id="dead1", tail="1", attempt="1", follow="--follow")
@example(job_id="dead1", tail="0", attempt="2", follow=None)
@example(job_id="pending1", tail=None, attempt=None, follow=None)
@example(job_id="\udcff", tail=None, attempt=None, follow="-f")
@given(job_id=seeded_ids | ids, tail=st.one_of(st.none(), counts, garbage),
       attempt=st.one_of(st.none(), counts, garbage), follow=st.sampled_from([None, "--follow", "-f"]))
def test_logs(seed: Path, capsys: pytest.CaptureFixture, job_id: str, tail: str | None, attempt: str | None,
              follow: str | None) -> None:
    if job_id == "pending1":
        follow = None  # --follow would wait for a worker to start it
    check(seed, capsys, ["logs", *opts(tail=tail, attempt=attempt), *([follow] if follow else []), "--", job_id],
          effect=read_only)


def cancelled_as_asked(job_ids: list[str]) -> Callable[[Run], None]:
    """`cancel` answers every id: the seeded pending job moves to cancelled.json; every other id
    (finished, unknown, impossible) is one error line, exit 1, and changes nothing."""

    def effect(run: Run) -> None:
        if run.code == 2:  # no id at all
            assert not job_ids, run.args
            run.unchanged()
            return
        distinct = list(dict.fromkeys(job_ids))
        refused = [job_id for job_id in distinct if job_id != "pending1"]
        assert run.code == (1 if refused else 0), (run.code, run.args, run.err)
        lines = run.error_lines()
        assert len(lines) == len(refused) and all(line.startswith("error:") for line in lines), (run.args, run.err)
        if "pending1" not in distinct:
            run.unchanged("a cancel that cancelled nothing changed state files")
            return
        assert "Cancelled job: pending1 (was pending)" in run.out, run.out
        assert jobs_in(run.after[queuectl.QUEUE_FILE]) == []
        cancelled = jobs_in(run.after[queuectl.CANCELLED_FILE])
        assert cancelled[:-1] == jobs_in(run.before[queuectl.CANCELLED_FILE])
        assert (cancelled[-1]["id"], cancelled[-1]["state"]) == ("pending1", "cancelled"), cancelled[-1]
        assert {name: data for name, data in run.after.items() if name not in (queuectl.QUEUE_FILE,
                queuectl.CANCELLED_FILE)} == {name: data for name, data in run.before.items()
                                              if name not in (queuectl.QUEUE_FILE, queuectl.CANCELLED_FILE)}

    return effect


@SETTINGS
@example(job_ids=["pending1", "done1", "nosuch"])
@example(job_ids=["pending1", "pending1"])
@example(job_ids=["cancelled1", "dead1", "\udcff", "../pending1", "a\nb"])
@given(job_ids=st.lists(seeded_ids | ids, max_size=4))
def test_cancel(seed: Path, capsys: pytest.CaptureFixture, job_ids: list[str]) -> None:
    check(seed, capsys, ["cancel", "--", *job_ids], effect=cancelled_as_asked(job_ids))


def purged_as_asked(state: str | None, older_than: str | None, yes: bool, start: float) -> Callable[[Run], None]:
    """Without --yes and no terminal, purge refuses (exit 1, no change). With --yes it removes
    exactly the finished jobs of the asked states that finished before the cut, with their
    logs, and nothing else; queue.json is never touched."""

    def effect(run: Run) -> None:
        if run.code != 0 or run.out.startswith("Nothing to purge."):
            usual(run)
            run.unchanged()
            return
        assert yes, (run.args, run.out)
        end = time.time()
        states = {queuectl.finished_state(state)} if state is not None else set(queuectl.FINISHED_STATES)
        age = queuectl.parse_duration(older_than, "duration") if older_than is not None else None
        for name in (queuectl.QUEUE_FILE, queuectl.CONFIG_FILE, queuectl.STOP_FILE):
            assert run.after[name] == run.before[name], f"purge changed {name}: {run.args!r}"
        removed = []
        for name in (queuectl.PROCESSED_FILE, queuectl.FAILED_FILE, queuectl.CANCELLED_FILE):
            old, new = jobs_in(run.before[name]), jobs_in(run.after[name])
            assert [job for job in old if job in new] == new, f"purge changed a kept job in {name}"
            removed += [job for job in old if job not in new]
            for job in new:  # kept: another state, or finished after the cut
                finished = queuectl._epoch(job["finished_at"])
                assert job["state"] not in states or (age is not None and finished >= start - age), (run.args, job)
        assert removed, run.out
        for job in removed:
            assert job["state"] in states, (run.args, job)
            assert age is None or queuectl._epoch(job["finished_at"]) < end - age, (run.args, job)
        assert f"Purged {len(removed)} job(s)" in run.out, run.out
        assert (run.after[DEAD_LOG] is None) == any(job["id"] == "dead1" for job in removed), "dead1's log"
        assert not run.error_lines(), run.err

    return effect


@SETTINGS
@example(state=None, older_than=None, yes=True, answer=b"")
@example(state="dlq", older_than="0", yes=True, answer=b"")
@example(state="Canceled", older_than="1d", yes=True, answer=b"y\n")
@example(state=None, older_than=None, yes=False, answer=b"y\n")
@given(state=st.none() | st.sampled_from(["completed", "dead", "cancelled", "processed", "DLQ", "canceled",
                                          "pending", "processing", "failed", "all"]) | garbage,
       older_than=st.one_of(st.none(), durations, garbage),
       yes=st.booleans(), answer=st.binary(max_size=8))
def test_purge(seed: Path, capsys: pytest.CaptureFixture, state: str | None, older_than: str | None, yes: bool,
               answer: bytes) -> None:
    args = ["purge", *opts(state=state, older_than=older_than), *(["--yes"] if yes else [])]
    check(seed, capsys, args, stdin=answer, effect=purged_as_asked(state, older_than, yes, time.time()))


@pytest.mark.parametrize("answer", [b"y\n", b"YES\n", b" y \n", b"", b"\n", b"n\n", b"no\n", b"yes please\n",
                                    b"\xff\n", b"\x00y\n"])
def test_purge_asks_on_a_terminal(seed: Path, capsys: pytest.CaptureFixture, answer: bytes) -> None:
    """Only y or yes deletes; anything else (Ctrl+D too) deletes nothing, exit 1 (README: exit codes)."""
    run = check(seed, capsys, ["purge"], stdin=answer, tty=True, effect=lambda run: None)
    assert "Traceback" not in run.err and "[y/N]" in run.out, run.out
    if answer.strip().lower() in (b"y", b"yes"):
        assert run.code == 0 and "Purged 3 job(s)" in run.out, (run.code, run.out, run.err)
        assert all(jobs_in(run.after[name]) == [] for name in JOB_FILES[1:]) and run.after[DEAD_LOG] is None
        assert run.after[queuectl.QUEUE_FILE] == run.before[queuectl.QUEUE_FILE]
    else:
        assert run.code == 1 and "Nothing was deleted." in run.out, (run.code, run.out, run.err)
        run.unchanged("a declined purge changed state files")


@SETTINGS
@given(since=st.one_of(st.none(), durations, garbage), as_json=st.booleans(),
       extra=st.just([]) | st.lists(garbage, min_size=1, max_size=1))
def test_stats(seed: Path, capsys: pytest.CaptureFixture, since: str | None, as_json: bool,
               extra: list[str]) -> None:
    run = check(seed, capsys, ["stats", *opts(since=since), *(["--json"] if as_json else []), *extra],
                effect=read_only)
    if run.code == 0 and as_json and not extra:
        data = json.loads(run.out)
        assert sum(data["finished"].values()) <= 3 and data["backlog"]["pending"] == 1, data


def _may_block(text: str) -> bool:
    """Would argparse take this --timeout, and would `wait` then wait more than a moment?"""
    try:
        value = float(text)
    except ValueError:
        return False
    return not value <= 0.05  # (NaN too: see test_wait_with_a_nan_timeout_returns)


timeouts = st.one_of(st.sampled_from(["0", "0.0", "0.01", "0.05", "-0", " 0 ", "1e-9", "0e5", "-1", "-0.5"]),
                     garbage.filter(lambda text: not _may_block(text)))


def waited(run: Run) -> None:
    """wait never writes. Exit 0: all completed; 1: an error line, or a job it waited for ended
    dead or cancelled (said on stdout); 124: timed out (said on stdout)."""
    run.unchanged("wait changed state files")
    assert run.code in (0, 1, 2, 124), (run.code, run.args, run.err)
    errors = [line for line in run.error_lines() if line.startswith("error:")]
    if run.code == 124:
        assert run.out.startswith("Timed out after") and not errors, (run.out, run.err)
    elif run.code == 1:
        assert (len(run.error_lines()) == 1 and errors) or (not errors and " job(s) finished: " in run.out), (
            run.args, run.out, run.err)


@SETTINGS
@example(job_ids=[], timeout="0")
@example(job_ids=["pending1", "done1"], timeout="0.01")
@example(job_ids=["done1", "dead1"], timeout=None)
@example(job_ids=["cancelled1"], timeout=None)
@example(job_ids=["done1", "nosuch"], timeout=None)
@given(job_ids=st.lists(seeded_ids | ids, max_size=3), timeout=st.none() | timeouts)
def test_wait(seed: Path, capsys: pytest.CaptureFixture, job_ids: list[str], timeout: str | None) -> None:
    if timeout is None and (not job_ids or "pending1" in job_ids):
        timeout = "0"  # no worker runs here: pending1 never finishes
    check(seed, capsys, ["wait", *opts(timeout=timeout), "--", *job_ids], effect=waited)


def test_wait_with_a_nan_timeout_returns(seed: Path, tmp_path: Path) -> None:
    home = tmp_path / "data"
    shutil.copytree(seed, home)
    before = snapshot(home)
    proc = subprocess.run([sys.executable, SCRIPT, "--home", str(home), "wait", "--timeout", "nan", "pending1"],
                          capture_output=True, timeout=2)
    assert proc.returncode in (1, 2, 124), proc
    assert b"Traceback" not in proc.stderr
    assert snapshot(home) == before


def edit_record(name: str, job_id: str, field: str, value: Any) -> Callable[[Path], None]:
    """A hand edit: one field of one job set to `value`; the file stays in queuectl's layout."""

    def prepare(home: Path) -> None:
        jobs = jobs_in((home / name).read_bytes())
        for job in jobs:
            if job["id"] == job_id:
                job[field] = value
        (home / name).write_bytes(queuectl.render_array(queuectl.dump_line(job).encode() for job in jobs))

    return prepare


@pytest.mark.parametrize("name, job_id, field, value, args", [
    (queuectl.PROCESSED_FILE, "done1", "finished_at", 5, ["stats"]),
    (queuectl.CANCELLED_FILE, "cancelled1", "finished_at", 1.5, ["purge", "--older-than", "1d", "--yes"]),
    (queuectl.FAILED_FILE, "dead1", "updated_at", [1], ["logs", "dead1"]),
    (queuectl.PROCESSED_FILE, "done1", "finished_at", True, ["list"]),
    (queuectl.QUEUE_FILE, "pending1", "created_at", 5, ["stats", "--json"]),
])
def test_a_timestamp_that_is_not_a_string(seed: Path, capsys: pytest.CaptureFixture, name: str, job_id: str,
                                          field: str, value: Any, args: list[str]) -> None:
    """Either the command copes, or it stops with one line naming the file; never a traceback."""
    check(seed, capsys, args, prepare=edit_record(name, job_id, field, value))


def test_show_an_output_that_is_not_a_string(seed: Path, capsys: pytest.CaptureFixture) -> None:
    check(seed, capsys, ["show", "done1"], prepare=edit_record(queuectl.PROCESSED_FILE, "done1", "output", 5))
