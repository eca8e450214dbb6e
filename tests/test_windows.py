"""Windows behaviour, tested on Linux.

No Windows machine runs these tests. Two things stand in for it:

* a simulator of how a typed command line reaches ``sys.argv`` on Windows (the PowerShell
  parser for the forms in notes/windows.md §1.2, the Legacy and Standard native-argument
  binders, and the UCRT splitter python.exe uses, §1.1-1.5), pinned first against every cell of
  the §1.3 table, then used to feed ``queuectl.main`` exactly what a Windows user's shell would;
* queuectl's small platform functions, called with ``platform="win32"`` and fakes for the
  Windows-only callables (taskkill, ctypes, os.replace), never by flipping ``sys.platform``.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes as real_ctypes
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import queuectl
from conftest import ROOT, fast

# =====================================================================================
# 1. The simulator
# =====================================================================================


def ps_values(typed: str) -> list[str]:
    """PowerShell's parser in argument mode: typed text -> argument values (§1.2).

    Backtick escapes; '' inside '...' and "" or `" inside "..." are quotes; a backslash is an
    ordinary character. A token that *starts* with a quoted string ends with that string: what
    follows directly is the next argument (PowerShell/PowerShell#6467). A bare token may hold
    quoted parts ("id\\":\\"job1" -> id\\:\\job1). $-expansion is not modelled.
    """
    values: list[str] = []
    i, n = 0, len(typed)

    def quoted(i: int) -> tuple[str, int]:
        """The quoted string starting at typed[i]: (value, index after it)."""
        quote, out = typed[i], []
        i += 1
        while i < n:
            c = typed[i]
            if quote == '"' and c == "`" and i + 1 < n:
                out.append(typed[i + 1])
                i += 2
            elif c == quote and i + 1 < n and typed[i + 1] == quote:
                out.append(quote)
                i += 2
            elif c == quote:
                return "".join(out), i + 1
            else:
                out.append(c)
                i += 1
        raise ValueError(f"unterminated string in {typed!r}")

    while True:
        while i < n and typed[i].isspace():
            i += 1
        if i >= n:
            return values
        if typed[i] in "'\"":
            value, i = quoted(i)
            values.append(value)
            continue
        out: list[str] = []
        while i < n and not typed[i].isspace():
            if typed[i] == "`" and i + 1 < n:
                out.append(typed[i + 1])
                i += 2
            elif typed[i] in "'\"":
                part, i = quoted(i)
                out.append(part)
            else:
                out.append(typed[i])
                i += 1
        values.append("".join(out))


def need_quotes(value: str) -> bool:
    """NativeCommandParameterBinder.NeedQuotes: whitespace outside an even run of unescaped "."""
    quotes, after_backslash, need = 0, False, False
    for c in value:
        if c == '"' and not after_backslash:
            quotes += 1
        elif c.isspace() and quotes % 2 == 0:
            need = True
        after_backslash = c == "\\"
    return need


def legacy_command_line(values: list[str]) -> str:
    """Legacy binder (Windows PowerShell 5.1, pwsh 7.0-7.2): join with spaces, wrap a value in
    quotes only when NeedQuotes says so, and never escape the quotes inside it."""
    return " ".join(f'"{value}"' if need_quotes(value) else value for value in values)


def paste_arguments(values: list[str]) -> str:
    """Standard binder (pwsh 7.3+): .NET PasteArguments.AppendArgument for each value."""
    parts = []
    for arg in values:
        if arg and not any(c.isspace() or c == '"' for c in arg):
            parts.append(arg)
            continue
        out, i = ['"'], 0
        while i < len(arg):
            c = arg[i]
            i += 1
            if c == "\\":
                count = 1
                while i < len(arg) and arg[i] == "\\":
                    count += 1
                    i += 1
                if i == len(arg):  # the closing quote follows: double them
                    out.append("\\" * (2 * count))
                elif arg[i] == '"':
                    out.append("\\" * (2 * count + 1) + '"')
                    i += 1
                else:
                    out.append("\\" * count)
            elif c == '"':
                out.append('\\"')
            else:
                out.append(c)
        out.append('"')
        parts.append("".join(out))
    return " ".join(parts)


def ucrt_split(line: str) -> list[str]:
    """How python.exe (the UCRT) splits its command line into argv[1:] (§1.5)."""
    args: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            return args
        out: list[str] = []
        in_quotes = False
        while i < n:
            slashes = 0
            while i < n and line[i] == "\\":
                slashes += 1
                i += 1
            if i < n and line[i] == '"':
                out.append("\\" * (slashes // 2))
                if slashes % 2:  # 2n+1 backslashes + ": n backslashes and a literal "
                    out.append('"')
                    i += 1
                elif in_quotes and i + 1 < n and line[i + 1] == '"':  # "" inside quotes: a " and stay quoted
                    out.append('"')
                    i += 2
                else:  # 2n backslashes + ": n backslashes, and the quote toggles
                    in_quotes = not in_quotes
                    i += 1
                continue
            out.append("\\" * slashes)
            if i >= n or (not in_quotes and line[i] in " \t"):
                break
            out.append(line[i])
            i += 1
        args.append("".join(out))


def argv_from(channel: str, typed: str) -> list[str]:
    """What queuectl's argv holds after `--json` when `typed` is typed in this shell."""
    if channel == "legacy":  # Windows PowerShell 5.1, pwsh 7.0-7.2, $PSNativeCommandArgumentPassing='Legacy'
        return ucrt_split(legacy_command_line(ps_values(typed)))
    if channel == "standard":  # pwsh 7.3+
        return ucrt_split(paste_arguments(ps_values(typed)))
    if channel == "cmd":  # cmd.exe hands the text to python.exe verbatim
        return ucrt_split(typed)
    if channel == "bash":
        return shlex.split(typed)
    if channel == "start-process":  # Start-Process -ArgumentList: joined with spaces, no quoting at all
        return ucrt_split(" ".join(ps_values(typed)))
    raise AssertionError(channel)


# -- the simulator, pinned to notes/windows.md ------------------------------------------

# §1.2: typed after --json -> PowerShell argument value(s), in any version.
PS_VALUES = [
    (r"""'{"id":"job1"}'""", ['{"id":"job1"}']),
    (r"""'{""id"":""job1""}'""", ['{""id"":""job1""}']),
    (r'''"{\"id\":\"job1\"}"''', ["{\\", r"id\:\job1\}"]),
    (r'''"{\"id\":\"job1\",\"command\":\"sleep 2\"}"''', ["{\\", r"id\:\job1\,\command\:\sleep", r"2\}"]),
    (r"""'{\"id\":\"job1\"}'""", [r'{\"id\":\"job1\"}']),
    ('"{`"id`":`"job1`"}"', ['{"id":"job1"}']),
    ('"{""id"":""job1""}"', ['{"id":"job1"}']),
]


@pytest.mark.parametrize("typed, values", PS_VALUES)
def test_simulated_powershell_parser_gives_the_values_of_section_1_2(typed, values):
    assert ps_values(typed) == values


def test_simulated_powershell_parser_splits_a_token_that_starts_with_a_quoted_string():
    # PowerShell/PowerShell#15888: "a"'b'"c" reaches a native program as three arguments.
    assert ps_values("\"a\"'b'\"c\"") == ["a", "b", "c"]
    assert ps_values("x\"a b\"y 'it''s'") == ["xa by", "it's"]


# §1.3: rows R1-R9, typed in PowerShell -> sys.argv entries after --json, Legacy and Standard.
INTENDED_ID = ['{"id":"job1"}']
INTENDED_SLEEP = ['{"id":"job1","command":"sleep 2"}']
TABLE_1_3 = [
    ("R1", r"""'{"id":"job1"}'""", ["{id:job1}"], INTENDED_ID),
    ("R2", r"""'{"id":"job1","command":"sleep 2"}'""", ["{id:job1,command:sleep 2}"], INTENDED_SLEEP),
    ("R2b", r"""'{"id": "job1"}'""", ["{id: job1}"], ['{"id": "job1"}']),
    ("R3", r"""'{""id"":""job1""}'""", ["{id:job1}"], ['{""id"":""job1""}']),
    ("R4", r"""'{""id"":""job1"",""command"":""sleep 2""}'""", INTENDED_SLEEP,
     ['{""id"":""job1"",""command"":""sleep 2""}']),
    ("R4b", r"""'{""id"":""job1"",""command"":""echo""}'""", ["{id:job1,command:echo}"],
     ['{""id"":""job1"",""command"":""echo""}']),
    ("R5", r'''"{\"id\":\"job1\"}"''', ["{\\", r"id\:\job1\}"], ["{\\", r"id\:\job1\}"]),
    ("R6", r'''"{\"id\":\"job1\",\"command\":\"sleep 2\"}"''', ["{\\", r"id\:\job1\,\command\:\sleep", r"2\}"],
     ["{\\", r"id\:\job1\,\command\:\sleep", r"2\}"]),
    ("R7", r"""'{\"id\":\"job1\"}'""", INTENDED_ID, [r'{\"id\":\"job1\"}']),
    ("R8", r"""'{\"id\":\"job1\",\"command\":\"sleep 2\"}'""", INTENDED_SLEEP,
     [r'{\"id\":\"job1\",\"command\":\"sleep 2\"}']),
    ("R9", '"{`"id`":`"job1`"}"', ["{id:job1}"], INTENDED_ID),
]

# §1.3, second table: the same text typed into cmd.exe and into bash.
TABLE_1_3_OTHER_SHELLS = [
    ("R1", r"""'{"id":"job1"}'""", ["'{id:job1}'"], INTENDED_ID),
    ("R2", r"""'{"id":"job1","command":"sleep 2"}'""", ["'{id:job1,command:sleep 2}'"], INTENDED_SLEEP),
    ("R3", r"""'{""id"":""job1""}'""", ["'{id:job1}'"], ['{""id"":""job1""}']),
    ("R4", r"""'{""id"":""job1"",""command"":""sleep 2""}'""", ["'{id:job1,command:sleep", "2}'"],
     ['{""id"":""job1"",""command"":""sleep 2""}']),
    ("R5", r'''"{\"id\":\"job1\"}"''', INTENDED_ID, INTENDED_ID),
    ("R6", r'''"{\"id\":\"job1\",\"command\":\"sleep 2\"}"''', INTENDED_SLEEP, INTENDED_SLEEP),
    ("R7", r"""'{\"id\":\"job1\"}'""", ["'{\"id\":\"job1\"}'"], [r'{\"id\":\"job1\"}']),
    ("cmd-idiom", '"{""id"":""job1"",""command"":""sleep 2""}"', INTENDED_SLEEP, ["{id:job1,command:sleep 2}"]),
]


@pytest.mark.parametrize("row, typed, legacy, standard", TABLE_1_3, ids=[r[0] for r in TABLE_1_3])
def test_simulator_reproduces_every_powershell_cell_of_table_1_3(row, typed, legacy, standard):
    assert argv_from("legacy", typed) == legacy
    assert argv_from("standard", typed) == standard


@pytest.mark.parametrize("row, typed, cmd, bash", TABLE_1_3_OTHER_SHELLS, ids=[r[0] for r in TABLE_1_3_OTHER_SHELLS])
def test_simulator_reproduces_every_cmd_and_bash_cell_of_table_1_3(row, typed, cmd, bash):
    assert argv_from("cmd", typed) == cmd
    assert argv_from("bash", typed) == bash


def test_bash_column_agrees_with_a_real_bash():
    bash = shutil.which("bash")
    if not bash:
        pytest.skip("bash is not installed here")
    script = "; ".join(f"printf '%s\\0' {typed}; printf '\\1'" for _, typed, _, _ in TABLE_1_3_OTHER_SHELLS)
    out = subprocess.run([bash, "-c", script], capture_output=True, check=True, timeout=10).stdout.decode()
    real = [piece.split("\0")[:-1] for piece in out.split("\1")[:-1]]
    assert real == [expected for _, _, _, expected in TABLE_1_3_OTHER_SHELLS]


def test_start_process_gives_stripped_json_on_every_version():
    # §1.3 "Other traps": Start-Process python -ArgumentList ...,'--json','{"id":"x"}' gives {id:x}.
    assert argv_from("start-process", r"""'{"id":"x"}'""") == ["{id:x}"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")), min_size=1))
def test_standard_binder_round_trips_any_value_through_the_ucrt(values):
    assert ucrt_split(paste_arguments(values)) == values


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='\x00"'), min_size=1)
                .filter(lambda v: not v.endswith("\\") and v.strip(" \t") == v and v != ""), min_size=1))
def test_legacy_binder_round_trips_values_without_quotes(values):
    # Without embedded quotes (and without a trailing backslash) Legacy is harmless too.
    assert ucrt_split(legacy_command_line(values)) == values


# =====================================================================================
# 2. What `enqueue` does with each cell
# =====================================================================================


@contextlib.contextmanager
def stdin_holding(data: bytes | None):
    old = sys.stdin
    if data is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    try:
        yield
    finally:
        sys.stdin = old


def run_main(argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
    """queuectl.main in this process: (exit code, stdout, stderr); argparse's exit is caught."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), stdin_holding(stdin):
        try:
            code = queuectl.main(argv)
        except SystemExit as stop:
            code = stop.code
    return code, out.getvalue(), err.getvalue()


def compact(job: dict[str, Any]) -> str:
    return json.dumps(job, ensure_ascii=False, separators=(",", ":"))


# How each row of §1.3 is typed, as a function of the job: so every row also gets variants
# with a command (the rows themselves mostly carry {"id":"job1"} only).
STYLES = {
    "R1": lambda job: "'" + compact(job) + "'",                              # R1, R2
    "R2b": lambda job: "'" + json.dumps(job, ensure_ascii=False) + "'",      # spaces outside the values
    "R3": lambda job: "'" + compact(job).replace('"', '""') + "'",           # R3, R4, R4b
    "R5": lambda job: '"' + compact(job).replace('"', '\\"') + '"',          # R5, R6
    "R7": lambda job: "'" + compact(job).replace('"', '\\"') + "'",          # R7, R8
    "R9": lambda job: '"' + compact(job).replace('"', '`"') + '"',           # R9
    "cmd-idiom": lambda job: '"' + compact(job).replace('"', '""') + '"',    # cmd's own doubling
}
JOBS = {
    "id": {"id": "job1"},
    "sleep": {"id": "job1", "command": "sleep 2"},
    "echo": {"id": "job1", "command": "echo"},
    "unicode": {"id": "job1", "command": "echo caf\u00e9 \u2713"},
}


@pytest.mark.parametrize("row, style, job", [
    ("R1", "R1", "id"), ("R2", "R1", "sleep"), ("R2b", "R2b", "id"), ("R3", "R3", "id"), ("R4", "R3", "sleep"),
    ("R4b", "R3", "echo"), ("R5", "R5", "id"), ("R6", "R5", "sleep"), ("R7", "R7", "id"), ("R8", "R7", "sleep"),
    ("R9", "R9", "id")])
def test_styles_type_exactly_the_rows_of_table_1_3(row, style, job):
    assert STYLES[style](JOBS[job]) == dict((r[0], r[1]) for r in TABLE_1_3)[row]


STRIPPED, DOUBLED, BACKSLASH = "stripped", "doubled", "backslash"
NOTE_WHAT = {
    STRIPPED: "the quotes PowerShell stripped were restored",
    DOUBLED: 'doubled quotes ("") were collapsed',
    BACKSLASH: 'backslash-escaped quotes (\\") were unescaped',
}
STRICT, ADVICE, SPLIT = "strict", "advice", "split"


def pieces(n: int) -> str:
    return f"pieces:{n}"


# style -> channel -> outcome for the jobs (id, sleep, echo, unicode). Worked out by hand from
# §1.3-1.5 (not from the simulator), so the two check each other:
#   strict: the intended JSON arrives; stored with no note (for "id": the missing-command error)
#   stripped/doubled/backslash: stored after that repair, with a one-line note
#   advice: exit 1, not JSON, what arrived and the quoting that works
#   pieces:N: exit 2, "arrived in N pieces"
#   split: the shell split the JSON at a space: exit 2, "arrived in N pieces", nothing stored
EXPECTED = {
    "R1": {"legacy": [STRIPPED] * 4, "standard": [STRICT] * 4, "cmd": [ADVICE] * 4, "bash": [STRICT] * 4},
    "R2b": {"legacy": [STRIPPED, SPLIT, STRIPPED, SPLIT], "standard": [STRICT] * 4, "bash": [STRICT] * 4},
    "R3": {"legacy": [STRIPPED, STRICT, STRIPPED, STRICT], "standard": [DOUBLED] * 4,
           "cmd": [ADVICE, SPLIT, ADVICE, SPLIT], "bash": [DOUBLED] * 4},
    "R5": {"legacy": [pieces(2), pieces(3), pieces(2), pieces(4)],
           "standard": [pieces(2), pieces(3), pieces(2), pieces(4)], "cmd": [STRICT] * 4, "bash": [STRICT] * 4},
    "R7": {"legacy": [STRICT] * 4, "standard": [BACKSLASH] * 4, "cmd": [ADVICE, SPLIT, ADVICE, SPLIT],
           "bash": [BACKSLASH] * 4},
    "R9": {"legacy": [STRIPPED] * 4, "standard": [STRICT] * 4},
    "cmd-idiom": {"legacy": [STRIPPED] * 4, "standard": [STRICT] * 4, "cmd": [STRICT] * 4, "bash": [STRIPPED] * 4},
}

def enqueue_cases() -> list[Any]:
    cases = []
    for style, channels in EXPECTED.items():
        for channel, outcomes in channels.items():
            for job_name, outcome in zip(JOBS, outcomes):
                for form in ("--json", "positional"):
                    cases.append(pytest.param(style, channel, job_name, outcome, form,
                                              id=f"{style}-{channel}-{job_name}-{form}"))
    return cases


def seeded_home(tmp_path: Path) -> tuple[str, Path, bytes]:
    home = str(tmp_path / "home")
    code, _, err = run_main(["--home", home, "enqueue", "--id", "seed", "--command", "echo seed"])
    assert code == 0, err
    queue_file = Path(home) / "queue.json"
    return home, queue_file, queue_file.read_bytes()


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line, got {text!r}"
    return lines[0]


@pytest.mark.parametrize("style, channel, job_name, outcome, form", enqueue_cases())
def test_enqueue_json_as_each_shell_delivers_it(tmp_path, style, channel, job_name, outcome, form):
    job = JOBS[job_name]
    argv = argv_from(channel, STYLES[style](job))
    home, queue_file, before = seeded_home(tmp_path)
    code, out, err = run_main(["--home", home, "enqueue", *(["--json"] if form == "--json" else []), *argv])
    if outcome in (STRICT, STRIPPED, DOUBLED, BACKSLASH) and "command" in job:
        assert code == 0, err
        assert out == "Enqueued job: job1\n"
        jobs = {j["id"]: j for j in json.loads(queue_file.read_text("utf-8"))}
        assert set(jobs) == {"seed", "job1"}
        assert (jobs["job1"]["command"], jobs["job1"]["state"]) == (job["command"], "pending")
        if outcome == STRICT:
            assert err == ""
        else:
            note = one_line(err)
            assert note.startswith(f"note: the JSON argument was repaired ({NOTE_WHAT[outcome]}); it was read as ")
            assert note.endswith(json.dumps(job))
        return
    assert queue_file.read_bytes() == before  # nothing stored on any error
    assert out == ""
    if outcome in (STRICT, STRIPPED, DOUBLED, BACKSLASH):  # {"id":"job1"} arrived, but a job needs a command
        assert code == 1
        line = one_line(err)
        assert line.startswith("error: the JSON argument: command is required and must be a non-empty string.")
        if outcome == STRICT:
            assert "repaired" not in line
        else:
            assert line.endswith(f"(the JSON argument was repaired ({NOTE_WHAT[outcome]}); "
                                 f"it was read as {json.dumps(job)})")
    elif outcome == ADVICE:
        assert code == 1
        line = one_line(err)
        assert line.startswith("error: the JSON argument is not valid JSON")
        assert f"Received: {argv[0]!r}." in line
        assert "--id ID --command" in line and "--file" in line
    elif outcome.startswith("pieces:"):
        assert code == 2
        line = one_line(err)
        assert line.startswith(f"error: the JSON arrived in {outcome[7:]} pieces {argv}: the shell split it ")
        assert "--id ID --command" in line and "--file" in line
    else:  # split at a space: the same advice, never a guess
        assert outcome == SPLIT and len(argv) >= 2
        assert code == 2
        line = one_line(err)
        assert line.startswith(f"error: the JSON arrived in {len(argv)} pieces {argv}: the shell split it ")
        assert "--id ID --command" in line and "--file" in line


def test_enqueue_from_start_process_is_repaired(tmp_path):
    home, queue_file, _ = seeded_home(tmp_path)
    argv = argv_from("start-process", r"""'{"id":"job1","command":"echo hi"}'""")
    assert argv == ["{id:job1,command:echo hi}"]
    code, _, err = run_main(["--home", home, "enqueue", "--json", *argv])
    assert code == 0 and "repaired" in err
    assert json.loads(queue_file.read_text("utf-8"))[-1]["command"] == "echo hi"


SAFE_COMMAND = st.text(st.sampled_from("abcxyzABC019 :-./=_+@%\u00e9\u2713"), min_size=1, max_size=30).map(
    str.strip).filter(lambda c: c != "" and c != "null" and "  " not in c)


@settings(max_examples=40, deadline=None)
@given(command=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1)
       .filter(str.strip))
def test_pwsh_7_3_delivers_any_command_as_strict_json(command):
    job = {"id": "job1", "command": command}
    typed = "'" + compact(job).replace("'", "''") + "'"
    argv = argv_from("standard", typed)
    assert argv == [compact(job)]
    with tempfile.TemporaryDirectory() as home:
        code, _, err = run_main(["--home", home, "enqueue", "--json", *argv])
        assert (code, err) == (0, "")
        assert json.loads(Path(home, "queue.json").read_text("utf-8"))[0]["command"] == command


@settings(max_examples=40, deadline=None)
@given(command=SAFE_COMMAND)
def test_powershell_5_1_quote_stripped_json_of_a_plain_command_is_restored_exactly(command):
    job = {"id": "job1", "command": command}
    argv = argv_from("legacy", "'" + compact(job) + "'")
    with tempfile.TemporaryDirectory() as home:
        code, _, err = run_main(["--home", home, "enqueue", "--json", *argv])
        assert code == 0, err
        assert NOTE_WHAT[STRIPPED] in err
        assert json.loads(Path(home, "queue.json").read_text("utf-8"))[0]["command"] == command


@pytest.mark.parametrize("command", ["type C:\\temp\\a.txt", "echo a\\b"])
def test_powershell_5_1_command_with_a_backslash_is_stored_exactly_or_refused(tmp_path, command):
    job = {"id": "job1", "command": command}
    argv = argv_from("legacy", "'" + compact(job) + "'")
    assert argv == ["{id:job1,command:" + command.replace("\\", "\\\\") + "}"]  # what Python receives
    home, queue_file, before = seeded_home(tmp_path)
    code, _, _ = run_main(["--home", home, "enqueue", "--json", *argv])
    if code == 0:
        assert json.loads(queue_file.read_text("utf-8"))[-1]["command"] == command
    else:
        assert code == 1 and queue_file.read_bytes() == before


# -- files and stdin as PowerShell writes them ---------------------------------------------

UNICODE_COMMAND = "echo caf\u00e9 \u2713 \u65e5\u672c \U0001f600"


def convert_to_json_51(job: dict[str, Any]) -> str:
    """Roughly what Windows PowerShell 5.1's ConvertTo-Json prints: one key per line, CRLF."""
    return "{\r\n" + ",\r\n".join(f'    {json.dumps(k)}:  {json.dumps(v, ensure_ascii=False)}'
                                   for k, v in job.items()) + "\r\n}"


DOCUMENTS = {
    "object": (convert_to_json_51({"id": "u1", "command": UNICODE_COMMAND}), {"u1": UNICODE_COMMAND}),
    "array": (json.dumps([{"id": "u1", "command": UNICODE_COMMAND}, {"id": "u2", "command": "echo 2"}],
                         ensure_ascii=False), {"u1": UNICODE_COMMAND, "u2": "echo 2"}),
    "lines": ("\r\n".join(compact({"id": f"u{n}", "command": f"{UNICODE_COMMAND} {n}"}) for n in (1, 2)),
              {"u1": UNICODE_COMMAND + " 1", "u2": UNICODE_COMMAND + " 2"}),
}
WRITERS = {
    "ps51-out-file": lambda text: b"\xff\xfe" + (text + "\r\n").encode("utf-16-le"),  # > and Out-File
    "ps51-out-file-bigendianunicode": lambda text: b"\xfe\xff" + (text + "\r\n").encode("utf-16-be"),
    "ps51-set-content-utf8": lambda text: b"\xef\xbb\xbf" + (text + "\r\n").encode("utf-8"),
    "ps51-pipe-utf8-output-encoding": lambda text: b"\xef\xbb\xbf" + (text + "\r\n").encode("utf-8"),
    "pwsh7-windows-utf8nobom": lambda text: (text + "\r\n").encode("utf-8"),
    "pwsh7-linux": lambda text: (text + "\n").encode("utf-8"),
}
CHANNELS = {
    "--file PATH": ["--file", "{path}"],
    "--file -": ["--file", "-"],
    "--json -": ["--json", "-"],
    "positional -": ["-"],
}


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("document", DOCUMENTS)
def test_enqueue_reads_what_powershell_writes(tmp_path, document, writer, channel):
    text, expected = DOCUMENTS[document]
    data = WRITERS[writer](text)
    path = tmp_path / "jobs.json"
    path.write_bytes(data)
    args = [arg.replace("{path}", str(path)) for arg in CHANNELS[channel]]
    home = str(tmp_path / "home")
    code, out, err = run_main(["--home", home, "enqueue", *args], stdin=None if channel == "--file PATH" else data)
    assert (code, err) == (0, "")
    assert out == "".join(f"Enqueued job: {job_id}\n" for job_id in expected)
    stored = {j["id"]: j["command"] for j in json.loads(Path(home, "queue.json").read_text("utf-8"))}
    assert stored == expected


@pytest.mark.parametrize("channel", ["--file PATH", "--file -"])
def test_enqueue_refuses_the_ansi_code_page_of_ps51_set_content_in_one_line(tmp_path, channel):
    data = (compact({"id": "u1", "command": "echo caf\u00e9"}) + "\r\n").encode("cp1252")
    path = tmp_path / "jobs.json"
    path.write_bytes(data)
    home = str(tmp_path / "home")
    args = ["--file", str(path)] if channel == "--file PATH" else ["--file", "-"]
    code, out, err = run_main(["--home", home, "enqueue", *args], stdin=data)
    source = str(path) if channel == "--file PATH" else "standard input"
    assert (code, out) == (1, "")
    assert one_line(err) == f"error: {source} is not UTF-8 or UTF-16 text; save it as UTF-8."
    assert not Path(home, "queue.json").exists()


# =====================================================================================
# 3. Shells
# =====================================================================================

PLATFORMS = ["win32", "linux", "darwin"]
COMMANDS = ["echo hi", 'echo "a b" & dir', "Write-Output 'caf\u00e9 \u2713 \U0001f600'", "line1\nline2 # comment"]


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("command", COMMANDS)
def test_shell_invocation_auto_leaves_it_to_subprocess(platform, command):
    assert queuectl.shell_invocation(command, "auto", platform) == (command, True)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("command", COMMANDS)
def test_shell_invocation_sh_and_bash(platform, command):
    assert queuectl.shell_invocation(command, "bash", platform) == (["bash", "-c", command], False)
    sh = "sh" if platform == "win32" else "/bin/sh"  # Windows: whatever sh (Git Bash) is on PATH
    assert queuectl.shell_invocation(command, "sh", platform) == ([sh, "-c", command], False)


@pytest.mark.parametrize("command", COMMANDS)
def test_shell_invocation_cmd_on_windows_is_the_line_subprocess_would_build(command, monkeypatch):
    comspec = r"C:\Windows\system32\cmd.exe"
    assert queuectl.shell_invocation(command, "cmd", "win32", comspec) == (f'{comspec} /c "{command}"', False)
    monkeypatch.setenv("COMSPEC", r"D:\cmd.exe")
    assert queuectl.shell_invocation(command, "cmd", "win32") == (f'D:\\cmd.exe /c "{command}"', False)
    monkeypatch.delenv("COMSPEC")
    assert queuectl.shell_invocation(command, "cmd", "win32") == (f'cmd.exe /c "{command}"', False)


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_shell_invocation_cmd_elsewhere_is_an_argv(platform):
    assert queuectl.shell_invocation("dir", "cmd", platform, "X:\\c.exe") == (["cmd.exe", "/c", "dir"], False)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("shell", ["powershell", "pwsh"])
@pytest.mark.parametrize("command", COMMANDS)
def test_shell_invocation_powershell_encodes_the_whole_script(platform, shell, command):
    args, use_shell = queuectl.shell_invocation(command, shell, platform)
    assert use_shell is False
    policy = ["-ExecutionPolicy", "Bypass"] if platform == "win32" else []
    assert args[:-1] == [shell, "-NoProfile", "-NonInteractive", *policy, "-EncodedCommand"]
    encoded = args[-1]
    assert re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", encoded)  # nothing any quoting layer could touch
    script = base64.b64decode(encoded, validate=True).decode("utf-16-le")
    assert script == queuectl.POWERSHELL_PROLOGUE + command + queuectl.POWERSHELL_EPILOGUE
    # The command sits on lines of its own: a trailing # comment cannot swallow the epilogue.
    assert queuectl.POWERSHELL_PROLOGUE.endswith("\n") and queuectl.POWERSHELL_EPILOGUE.startswith("\n")
    # On Windows, Popen joins the list with list2cmdline; pwsh (.NET, MSVC rules) splits it back exactly.
    assert ucrt_split(subprocess.list2cmdline(args)) == args


def test_powershell_prologue_and_epilogue_say_what_they_must():
    prologue, epilogue = queuectl.POWERSHELL_PROLOGUE, queuectl.POWERSHELL_EPILOGUE
    assert "[Console]::OutputEncoding" in prologue and "UTF8Encoding $false" in prologue  # UTF-8, no BOM
    assert "$ProgressPreference = 'SilentlyContinue'" in prologue
    assert "exit $LASTEXITCODE" in epilogue and "exit 1" in epilogue and "$?" in epilogue
    assert (prologue + epilogue).isascii()


# -- real runs on Linux -------------------------------------------------------------------

SHOW_BASH = 'echo "bash=$BASH_VERSION"'


def finished(queue: Any) -> dict[str, dict[str, Any]]:
    return {job["id"]: job for name in ("processed.json", "failed.json") for job in queue.file(name)}


def test_worker_runs_each_job_in_its_shell_and_the_config_sets_the_default(queue, monkeypatch):
    monkeypatch.delenv("BASH_VERSION", raising=False)
    fast(queue)
    queue.ok("enqueue", "--json", json.dumps({"id": "default-auto", "command": SHOW_BASH}))
    queue.ok("enqueue", "--json", json.dumps({"id": "job-bash", "command": SHOW_BASH, "shell": " BASH "}))
    queue.ok("worker", "start", "--burst")
    queue.ok("config", "set", "shell", "bash")
    assert queue.json("config", "get", "shell") == "bash"
    queue.ok("enqueue", "--json", json.dumps({"id": "default-bash", "command": SHOW_BASH}))
    queue.ok("enqueue", "--json", json.dumps({"id": "job-sh", "command": SHOW_BASH, "shell": "sh"}))
    queue.ok("enqueue", "--json", json.dumps({"id": "job-auto", "command": SHOW_BASH, "shell": "auto"}))
    queue.ok("worker", "start", "--burst")
    jobs = finished(queue)
    assert {job_id: job["state"] for job_id, job in jobs.items()} == dict.fromkeys(
        ["default-auto", "job-bash", "default-bash", "job-sh", "job-auto"], "completed")
    assert jobs["job-bash"]["shell"] == "bash"  # stored normalised
    assert "shell" not in jobs["default-bash"]  # the config decides when the job runs
    for job_id in ("job-bash", "default-bash"):
        assert re.fullmatch(r"bash=\d+\.\d+\S*\n", jobs[job_id]["output"]), jobs[job_id]
    # /bin/sh is dash here (no $BASH_VERSION); wherever it is bash, it must at least be /bin/sh that ran.
    plain_sh = subprocess.run(["/bin/sh", "-c", SHOW_BASH], capture_output=True, text=True, check=True).stdout
    for job_id in ("default-auto", "job-sh", "job-auto"):
        assert jobs[job_id]["output"] == plain_sh, jobs[job_id]


@pytest.mark.parametrize("shell", ["pwsh", "powershell", "cmd"])
def test_a_missing_shell_fails_the_job_by_name_and_reaches_the_dlq(queue, shell):
    program = "cmd.exe" if shell == "cmd" else shell
    if shutil.which(program):
        pytest.skip(f"{program} is installed here")
    fast(queue, max_backoff=0.05)  # not 0: see test_a_retry_due_at_once_is_not_lost_by_the_claim_of_its_round
    queue.ok("enqueue", "--json", json.dumps({"id": "ps", "command": "Write-Output hi", "shell": shell,
                                              "max_retries": 2}))
    proc = queue.run("worker", "start", "--burst", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    error = f"could not start the {shell} shell: No such file or directory"
    assert f"failed: ps ({error}); attempt 1 of 2, retrying in " in proc.stdout
    assert f"failed: ps ({error}); moved to the DLQ after 2 attempt(s)" in proc.stdout
    (job,) = queue.file("failed.json")
    assert (job["id"], job["state"], job["attempts"], job["error"], job["exit_code"]) == ("ps", "dead", 2, error, None)
    assert queue.file("queue.json") == []


@pytest.mark.parametrize("job", [
    {"id": "j", "command": "echo", "shell": "fish"},
    {"id": "j", "command": "echo", "shell": ""},
    {"id": "j", "command": "echo", "shell": 5},
    {"id": "j", "command": "echo", "shell": ["pwsh"]},
])
def test_enqueue_refuses_an_unknown_shell_in_one_line(tmp_path, job):
    home, queue_file, before = seeded_home(tmp_path)
    code, out, err = run_main(["--home", home, "enqueue", "--json", json.dumps(job)])
    assert (code, out) == (1, "")
    assert one_line(err) == ("error: the JSON argument: shell must be one of auto, sh, bash, cmd, powershell, pwsh, "
                             f"not {job['shell']!r}.")
    assert queue_file.read_bytes() == before


def test_config_refuses_an_unknown_shell_in_one_line(tmp_path):
    home = str(tmp_path / "home")
    assert run_main(["--home", home, "config", "set", "shell", "PwSh"])[0] == 0
    config = Path(home, "config.json").read_bytes()
    code, out, err = run_main(["--home", home, "config", "set", "shell", "fish"])
    assert (code, out) == (1, "")
    assert one_line(err) == "error: shell must be one of auto, sh, bash, cmd, powershell, pwsh, not 'fish'."
    assert Path(home, "config.json").read_bytes() == config
    assert run_main(["--home", home, "config", "get", "shell"])[1] == "pwsh\n"


def test_a_hand_edited_config_with_an_unknown_shell_stops_commands_in_one_line(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text('{"shell": "fish"}\n', encoding="utf-8")
    code, out, err = run_main(["--home", str(home), "enqueue", "--id", "j", "--command", "echo"])
    assert (code, out) == (1, "")
    line = one_line(err)
    assert line.startswith("error: ") and "shell must be one of" in line and "'fish'" in line
    assert not (home / "queue.json").exists()


@pytest.mark.skipif(not shutil.which("pwsh"), reason="pwsh is not installed here")
def test_pwsh_jobs_run_for_real(queue):
    fast(queue, max_backoff=0.05)
    jobs = [
        {"id": "ps-ok", "command": "Write-Output ('caf' + [char]0xE9 + ' ' + $PSVersionTable.PSEdition)"},
        {"id": "ps-exit", "command": "Write-Output 'caf\u00e9 \u2713'; exit 3"},
        {"id": "ps-error", "command": "Get-Item -LiteralPath ./no-such-file-here"},
        {"id": "ps-native", "command": "sh -c 'exit 4'"},
    ]
    for job in jobs:
        queue.ok("enqueue", "--json", json.dumps({**job, "shell": "pwsh", "max_retries": 1}))
    queue.ok("worker", "start", "--burst", timeout=180)
    done = finished(queue)
    assert done["ps-ok"]["state"] == "completed"
    assert done["ps-ok"]["output"].strip() == "caf\u00e9 Core"
    assert (done["ps-exit"]["state"], done["ps-exit"]["exit_code"]) == ("dead", 3)
    assert "caf\u00e9 \u2713" in done["ps-exit"]["output"]
    assert (done["ps-error"]["state"], done["ps-error"]["exit_code"]) == ("dead", 1)
    assert (done["ps-native"]["state"], done["ps-native"]["exit_code"]) == ("dead", 4)


# =====================================================================================
# 4. examples/smoke.ps1
# =====================================================================================


def test_examples_smoke_ps1_passes():
    exe = shutil.which("pwsh") or shutil.which("powershell")
    if not exe:
        pytest.skip("pwsh is not installed here; examples/smoke.ps1 is checked by reading")
    script = Path("examples") / "smoke.ps1"
    assert (ROOT / script).is_file(), f"{script} is missing"
    policy = ["-ExecutionPolicy", "Bypass"] if os.name == "nt" else []
    proc = subprocess.run([exe, "-NoProfile", *policy, "-File", str(script)], cwd=ROOT, capture_output=True,
                          timeout=600)
    out = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, out
    assert re.search(r"^\s*PASS\b", out, re.M), out
    assert not re.search(r"^\s*FAIL\b", out, re.M), out


# =====================================================================================
# 5. Windows branches of the platform functions
# =====================================================================================


def test_popen_options_on_windows_is_only_a_new_process_group():
    options = queuectl.popen_options("win32")
    flags = options["creationflags"]
    assert flags == 0x00000200  # CREATE_NEW_PROCESS_GROUP: Ctrl+C stays with the worker, taskkill /T reaches all
    # No console of its own, so CTRL_BREAK_EVENT and the worker's console still reach it (§4.3).
    for forbidden in (0x00000010, 0x00000008, 0x08000000):  # CREATE_NEW_CONSOLE, DETACHED_PROCESS, CREATE_NO_WINDOW
        assert not flags & forbidden
    assert "start_new_session" not in options and "preexec_fn" not in options


class Recorder:
    def __init__(self, result: Any = None, error: BaseException | None = None) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.result, self.error = result, error

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        return self.result


def never(name: str) -> Recorder:
    return Recorder(error=AssertionError(f"{name} must not be called on this platform"))


def test_kill_process_group_on_windows_runs_taskkill_tree(monkeypatch):
    run = Recorder(subprocess.CompletedProcess([], 0))
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(os, "killpg", never("os.killpg"), raising=False)
    monkeypatch.setattr(os, "kill", never("os.kill"))
    queuectl.kill_process_group(4242, "win32")
    ((args, kwargs),) = run.calls
    assert args == (["taskkill", "/T", "/F", "/PID", "4242"],)
    assert args[0] == queuectl.tree_kill_command(4242, "win32")
    assert kwargs["stdout"] == subprocess.DEVNULL and kwargs["stderr"] == subprocess.DEVNULL
    assert kwargs.get("check", False) is False


@pytest.mark.parametrize("error", [FileNotFoundError(2, "taskkill not found"), PermissionError(13, "denied")])
def test_kill_process_group_on_windows_survives_taskkill_failing_to_start(monkeypatch, error):
    monkeypatch.setattr(subprocess, "run", Recorder(error=error))
    queuectl.kill_process_group(4242, "win32")  # no exception: the job is reported by its worker as before


def test_kill_process_group_on_posix_uses_killpg_not_taskkill(monkeypatch):
    import signal

    killpg = Recorder()
    monkeypatch.setattr(subprocess, "run", never("subprocess.run"))
    monkeypatch.setattr(os, "killpg", killpg)
    for platform in ("linux", "darwin"):
        assert queuectl.tree_kill_command(7, platform) is None
        queuectl.kill_process_group(7, platform)
    assert [args for args, _ in killpg.calls] == [(7, signal.SIGKILL)] * 2


def test_kill_tree_on_windows_kills_the_tree_then_the_process(monkeypatch):
    order: list[str] = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **kwargs: order.append(" ".join(argv)))

    class FakeProc:
        pid = 99

        def kill(self) -> None:
            order.append("kill")
            raise ProcessLookupError(3, "already gone")  # an OSError: ignored

    monkeypatch.setattr(queuectl, "kill_marked", never("kill_marked"))  # no /proc on Windows
    queuectl.kill_tree(FakeProc(), "job#1@WINBOX:7", "win32")  # type: ignore[arg-type]
    assert order == ["taskkill /T /F /PID 99", "kill"]


def test_children_left_and_this_host_on_windows_use_no_posix_calls(monkeypatch):
    import socket

    monkeypatch.setattr(os, "killpg", never("os.killpg"))
    monkeypatch.setattr(os, "uname", never("os.uname"))
    monkeypatch.setattr(socket, "gethostname", lambda: "WINBOX")
    assert queuectl.children_left(1234, "win32") is False
    assert queuectl.this_host("win32") == "WINBOX"


def test_fsync_dir_is_skipped_on_windows(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "open", never("os.open"))
    monkeypatch.setattr(os, "fsync", never("os.fsync"))
    assert queuectl._fsync_dir(str(tmp_path), "win32") is None


def test_fsync_dir_on_posix_fsyncs_the_folder(monkeypatch, tmp_path):
    synced: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        import stat

        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    queuectl._fsync_dir(str(tmp_path), "linux")
    assert synced == [True]


class FakeClock:
    """time.monotonic and time.sleep for queuectl: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __getattr__(self, name: str) -> Any:
        import time

        return getattr(time, name)


def sharing_violation(winerror: int) -> PermissionError:
    error = PermissionError(13, "The process cannot access the file")
    error.winerror = winerror  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize("winerror", [5, 32, 33])
def test_replace_with_retry_on_windows_retries_then_succeeds(monkeypatch, winerror):
    clock = FakeClock()
    monkeypatch.setattr(queuectl, "time", clock)
    replace = Recorder()
    failures = iter([sharing_violation(winerror)] * 4)

    def flaky(src: str, dst: str) -> None:
        replace(src, dst)
        error = next(failures, None)
        if error:
            raise error

    queuectl.replace_with_retry("s.tmp", "d.json", "win32", flaky)
    assert len(replace.calls) == 5
    assert clock.sleeps == [0.01, 0.02, 0.04, 0.08]


@pytest.mark.parametrize("winerror", [5, 32, 33])
def test_replace_with_retry_on_windows_gives_up_after_the_deadline_and_raises(monkeypatch, winerror):
    clock = FakeClock()
    monkeypatch.setattr(queuectl, "time", clock)
    replace = Recorder(error=sharing_violation(winerror))
    with pytest.raises(PermissionError) as info:
        queuectl.replace_with_retry("s.tmp", "d.json", "win32", replace)
    assert info.value.winerror == winerror  # type: ignore[attr-defined]
    # Doubling from 10 ms, capped at 250 ms, until 2 s have passed.
    assert clock.sleeps[:6] == [0.01, 0.02, 0.04, 0.08, 0.16, 0.25]
    assert set(clock.sleeps[5:]) == {0.25}
    assert 2.0 <= sum(clock.sleeps) < 2.0 + 0.25 + 1e-9
    assert len(replace.calls) == len(clock.sleeps) + 1


@pytest.mark.parametrize("error", [FileNotFoundError(2, "gone"), OSError(18, "Invalid cross-device link"),
                                   IsADirectoryError(21, "is a folder")])
def test_replace_with_retry_on_windows_does_not_retry_other_errors(monkeypatch, error):
    clock = FakeClock()
    monkeypatch.setattr(queuectl, "time", clock)
    replace = Recorder(error=error)
    with pytest.raises(type(error)):
        queuectl.replace_with_retry("s.tmp", "d.json", "win32", replace)
    assert len(replace.calls) == 1 and clock.sleeps == []


def test_replace_with_retry_on_windows_really_replaces(tmp_path):
    (tmp_path / "s.tmp").write_text("new")
    (tmp_path / "d.json").write_text("old")
    queuectl.replace_with_retry(str(tmp_path / "s.tmp"), str(tmp_path / "d.json"), "win32")
    assert (tmp_path / "d.json").read_text() == "new" and not (tmp_path / "s.tmp").exists()


# -- pid_alive through _windows_pid_alive, with a fake ctypes ---------------------------------

WAIT_TIMEOUT, WAIT_OBJECT_0, SYNCHRONIZE = 0x102, 0, 0x00100000
ERROR_ACCESS_DENIED, ERROR_INVALID_PARAMETER = 5, 87


class FakeFunction:
    """A kernel32 export: callable, and argtypes/restype can be set on it."""

    def __init__(self, library: FakeKernel32, name: str) -> None:
        self.library, self.name = library, name

    def __call__(self, *args: Any) -> Any:
        result = getattr(self.library, "_" + self.name)(*args)
        if self.library.use_last_error:  # ctypes swaps its private copy with the system value after the call
            self.library.ctypes.private_error = self.library.ctypes.system_error
        return result


class FakeKernel32:
    def __init__(self, fake_ctypes: FakeCtypes, use_last_error: bool) -> None:
        self.ctypes, self.use_last_error = fake_ctypes, use_last_error
        for name in ("OpenProcess", "WaitForSingleObject", "CloseHandle", "GetExitCodeProcess"):
            setattr(self, name, FakeFunction(self, name))

    def _OpenProcess(self, access: int, inherit: bool, pid: int) -> int:
        self.ctypes.opened.append((access, pid))
        state = self.ctypes.processes.get(pid)
        if state == "denied":
            self.ctypes.system_error = ERROR_ACCESS_DENIED
            return 0
        if state is None:
            self.ctypes.system_error = ERROR_INVALID_PARAMETER
            return 0
        return 1000 + pid

    def _WaitForSingleObject(self, handle: int, milliseconds: int) -> int:
        assert milliseconds == 0, "a liveness probe must not wait"
        return WAIT_TIMEOUT if self.ctypes.processes[handle - 1000] == "running" else WAIT_OBJECT_0

    def _CloseHandle(self, handle: int) -> int:
        self.ctypes.closed.append(handle)
        return 1

    def _GetExitCodeProcess(self, handle: int, pointer: Any) -> int:
        raise AssertionError("exit code 259 (STILL_ACTIVE) is no liveness test; use WaitForSingleObject")


class FakeCtypes(types.ModuleType):
    """ctypes as documented on Windows: ctypes.windll libraries leave get_last_error() alone;
    only WinDLL(..., use_last_error=True) libraries update it; GetLastError() is the system value."""

    def __init__(self, processes: dict[int, str]) -> None:
        super().__init__("ctypes")
        self.processes = processes
        self.system_error = 0
        self.private_error = 0
        self.opened: list[tuple[int, int]] = []
        self.closed: list[int] = []
        self.windll = types.SimpleNamespace(kernel32=FakeKernel32(self, use_last_error=False))

    def WinDLL(self, name: str, use_last_error: bool = False, **kwargs: Any) -> FakeKernel32:  # noqa: N802
        assert name.lower().removesuffix(".dll") == "kernel32", name
        return FakeKernel32(self, use_last_error)

    def get_last_error(self) -> int:
        return self.private_error

    def set_last_error(self, value: int) -> int:
        old, self.private_error = self.private_error, value
        return old

    def GetLastError(self) -> int:  # noqa: N802
        return self.system_error

    def __getattr__(self, name: str) -> Any:
        return getattr(real_ctypes, name)


@pytest.fixture
def fake_windows(monkeypatch):
    fake = FakeCtypes({101: "running", 102: "exited", 103: "denied"})
    monkeypatch.setitem(sys.modules, "ctypes", fake)
    monkeypatch.setattr(os, "kill", never("os.kill"))
    return fake


@pytest.mark.parametrize("pid, alive", [(101, True), (102, False), (104, False)])
def test_pid_alive_on_windows_probes_with_openprocess_and_a_zero_wait(fake_windows, pid, alive):
    assert queuectl.pid_alive(pid, "win32") is alive
    ((access, asked),) = fake_windows.opened
    assert asked == pid and access & SYNCHRONIZE
    assert fake_windows.closed == ([1000 + pid] if pid in (101, 102) else [])


@pytest.mark.parametrize("pid", [0, -1, -4242])
def test_pid_alive_on_windows_refuses_non_positive_pids_without_probing(fake_windows, pid):
    assert queuectl.pid_alive(pid, "win32") is False
    assert fake_windows.opened == []


def test_pid_alive_on_windows_counts_access_denied_as_alive(fake_windows):
    assert queuectl.pid_alive(103, "win32") is True


def test_pid_alive_on_windows_after_an_earlier_access_denial_reports_a_missing_pid_dead(fake_windows):
    fake_windows.private_error = ERROR_ACCESS_DENIED  # a stale value left by some earlier ctypes call
    fake_windows.system_error = ERROR_ACCESS_DENIED
    assert queuectl.pid_alive(104, "win32") is False


# -- file names -----------------------------------------------------------------------------------

RESERVED = ["CON", "PRN", "AUX", "NUL"] + [f"{p}{n}" for p in ("COM", "LPT") for n in range(1, 10)]


def spellings(name: str) -> list[str]:
    mixed = "".join(c.lower() if i % 2 else c for i, c in enumerate(name))
    return sorted({name, name.lower(), name.capitalize(), mixed})


@pytest.mark.parametrize("name", RESERVED)
def test_safe_log_name_guards_every_reserved_device_name(name):
    for spelled in spellings(name):
        for suffix in ("", ".", ".txt", ".log", ".tar.gz", "..x"):
            job_id = spelled + suffix
            assert queuectl.ID_PATTERN.match(job_id)
            assert queuectl.safe_log_name(job_id) == f"_{job_id}.log"


@pytest.mark.parametrize("job_id", ["COM0", "LPT0", "COM10", "LPT10", "CONX", "XCON", "NULL", "AUXILIARY", "PRN1",
                                    "CON-1", "con_1", "CO", "NU", "LPT", "COM", "a.CON", "job.nul"])
def test_safe_log_name_leaves_names_that_are_no_devices(job_id):
    assert queuectl.safe_log_name(job_id) == f"{job_id}.log"


def test_make_file_lock_on_windows_is_a_thread_local_filelock_with_the_timeout(tmp_path):
    lock = queuectl.make_file_lock(str(tmp_path / "queuectl.lock"), "win32")
    assert lock.timeout == queuectl.LOCK_TIMEOUT
    assert lock.is_thread_local()


def test_store_on_the_windows_lock_works_and_times_out_in_one_line(tmp_path, monkeypatch):
    import filelock

    real = queuectl.make_file_lock
    monkeypatch.setattr(queuectl, "make_file_lock", lambda path, platform="win32": real(path, "win32"))
    monkeypatch.setattr(queuectl, "LOCK_TIMEOUT", 0.2)
    home = str(tmp_path / "home")
    assert run_main(["--home", home, "enqueue", "--id", "a", "--command", "echo a"])[0] == 0
    lock_path = str(Path(home, queuectl.LOCK_FILE))
    assert isinstance(queuectl.FolderStore._process_locks[os.path.abspath(lock_path)], filelock.BaseFileLock)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with filelock.FileLock(lock_path):  # another process's lock, as far as flock can tell
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        code, out, err = run_main(["--home", home, "enqueue", "--id", "b", "--command", "echo b"])
        assert (code, out) == (1, "")
        assert one_line(err).startswith(f"error: the queue in {home} is locked by another queuectl process")
    finally:
        release.set()
        holder.join(10)
    assert run_main(["--home", home, "enqueue", "--id", "b", "--command", "echo b"])[0] == 0
    assert [j["id"] for j in json.loads(Path(home, "queue.json").read_text("utf-8"))] == ["a", "b"]


# -- console -----------------------------------------------------------------------------------


def test_configure_console_makes_a_windows_ansi_pipe_replace_instead_of_crash(monkeypatch):
    # A redirected stdout on Windows: the ANSI code page with errors="strict".
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="cp1252", errors="strict")
    err = io.TextIOWrapper(err_bytes, encoding="cp1252", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    with pytest.raises(UnicodeEncodeError):
        out.write("\u2713")
    queuectl.configure_console()
    for stream in (out, err):
        assert (stream.encoding, stream.errors, stream.line_buffering) == ("cp1252", "replace", True)
    print("caf\u00e9 \u2713 \U0001f600")
    print("\u65e5", file=sys.stderr)
    assert out_bytes.getvalue() == "caf\u00e9 ? ?\n".encode("cp1252")  # already flushed: line buffering
    assert err_bytes.getvalue() == b"?\n"


def test_configure_console_tolerates_streams_it_cannot_reconfigure(monkeypatch):
    detached = io.TextIOWrapper(io.BytesIO())
    detached.detach()  # reconfigure raises ValueError
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # no reconfigure at all
    monkeypatch.setattr(sys, "stderr", detached)
    queuectl.configure_console()


def test_worker_on_an_ansi_code_page_pipe_prints_any_job_output(queue, monkeypatch):
    monkeypatch.setenv("PYTHONIOENCODING", "cp1252")  # what a Windows pipe gets, errors="strict"
    monkeypatch.delenv("PYTHONUTF8", raising=False)
    fast(queue)
    queue.ok("enqueue", "--json", json.dumps({"id": "u", "command": "printf 'caf\u00e9 \u2713 \U0001f600\\n'"}))
    proc = subprocess.run([sys.executable, queuectl.__file__, "worker", "start", "--burst"], env=queue.env(),
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stdout + proc.stderr
    assert "caf\u00e9 ? ?".encode("cp1252") in proc.stdout
    (job,) = queue.file("processed.json")
    assert job["output"] == "caf\u00e9 \u2713 \U0001f600\n"  # stored intact; only the console loses characters
    listed = subprocess.run([sys.executable, queuectl.__file__, "list"], env=queue.env(), capture_output=True,
                            timeout=60)
    assert listed.returncode == 0 and b"Traceback" not in listed.stderr


# =====================================================================================
# Found on the way (not Windows-specific)
# =====================================================================================


class StepClock:
    """now_ts for queuectl: starts 0.6 ms past a whole millisecond, then 1 ms later per call."""

    def __init__(self) -> None:
        import math
        import time

        self.now = math.floor(time.time()) + 0.0006

    def __call__(self) -> float:
        value = self.now
        self.now += 0.001
        return value


def test_a_retry_due_at_once_is_not_lost_by_the_claim_of_its_round(tmp_path, monkeypatch):
    home = str(tmp_path / "home")
    assert run_main(["--home", home, "config", "set", "max_backoff", "0"])[0] == 0
    assert run_main(["--home", home, "enqueue", "--id", "f", "--command", "exit 1"])[0] == 0
    store, me = queuectl.FolderStore(home), queuectl.WorkerIdentity()
    _, (claimed,), _ = store.worker_round([], 1, me)
    monkeypatch.setattr(queuectl, "now_ts", StepClock())
    failed = queuectl.Outcome("f", claimed["attempts"], exit_code=1, error="exit code 1", worker="Worker-1",
                              duration=0.01)
    recorded, again, _ = store.worker_round([failed], 1, me)
    assert [what for _, what in recorded] == ["failed"]
    assert again or store.next_due() is not None, (
        f"job f is failed (has_retries_waiting={store.has_retries_waiting()}) but in no due index")
