"""Garbage in: hypothesis-generated command lines for every subcommand.

Whatever the arguments, files or stdin hold, queuectl must never print a traceback:
the exit code is 0, 1 or 2; a failure (exit 1) is exactly one stderr line starting
with "error:"; and a command that failed leaves every state file byte-identical.
Everything runs in-process through queuectl.main in a copy of a seeded data folder.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import queuectl
from conftest import SCRIPT

SETTINGS = settings(max_examples=int(os.environ.get("GARBAGE_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=list(HealthCheck))
STATE_FILES = (queuectl.QUEUE_FILE, queuectl.PROCESSED_FILE, queuectl.FAILED_FILE, queuectl.CONFIG_FILE,
               queuectl.STOP_FILE)
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
ids = st.one_of(garbage, st.from_regex(queuectl.ID_PATTERN, fullmatch=True),
                st.sampled_from(["pending1", "done1", "dead1", "CON", "NUL", "COM1", "../pending1"]))

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
    """A data folder with a completed job (done1), a dead one (dead1) and a pending one (pending1)."""
    home = tmp_path_factory.mktemp("seed") / "data"
    for argv in (["config", "set", "max_retries", "0"], ["config", "set", "poll_interval", "0.05"],
                 ["enqueue", "--id", "done1", "--command", "true"],
                 ["enqueue", "--id", "dead1", "--command", "false"]):
        assert queuectl.main(["--home", str(home), *argv]) == 0
    subprocess.run([sys.executable, SCRIPT, "--home", str(home), "worker", "start", "--burst"],
                   check=True, capture_output=True, timeout=60)
    assert queuectl.main(["--home", str(home), "enqueue", "--id", "pending1", "--command", "true"]) == 0
    states = {job["id"]: job["state"] for name in STATE_FILES[:3]
              for job in json.loads((home / name).read_text("utf-8"))}
    assert states == {"done1": "completed", "dead1": "dead", "pending1": "pending"}, states
    return home


def snapshot(home: Path) -> dict[str, bytes | None]:
    return {name: (home / name).read_bytes() if (home / name).exists() else None for name in STATE_FILES}


class FakeStdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


def check(seed: Path, capsys: pytest.CaptureFixture, args: list[str], stdin: bytes | None = None) -> None:
    """Run `queuectl --home COPY ARGS` in a fresh copy of the seed and check the property."""
    work = Path(tempfile.mkdtemp(prefix="garbage-"))
    home = work / "data"
    shutil.copytree(seed, home)
    before = snapshot(home)
    old_stdin = sys.stdin
    capsys.readouterr()
    try:
        if stdin is not None:
            sys.stdin = FakeStdin(stdin)  # type: ignore[assignment]
        try:
            code = queuectl.main(["--home", str(home), *args])
        except SystemExit as exit_:
            code = exit_.code
            assert code in (0, 2), f"SystemExit({code!r}) for {args!r}"
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "Traceback" not in out, err
        assert code in (0, 1, 2), (code, args, err)
        if code != 0:
            if code == 1:
                lines = [line for line in err.split("\n") if line.strip()]
                assert len(lines) == 1 and lines[0].startswith("error:"), (args, err)
            assert snapshot(home) == before, f"a failed command changed state files: {args!r}"
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
