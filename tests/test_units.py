"""Precise unit checks of queuectl's pure functions (imported, no subprocess of queuectl)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import queuectl
from queuectl import CorruptFileError, QueueError

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
CONFIG = dict(queuectl.DEFAULT_CONFIG)


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


# -- backoff, durations, times ------------------------------------------------


def test_backoff_delay_doubles_with_base_2():
    assert [queuectl.backoff_delay(n, 2, 3600) for n in (1, 2, 3)] == [2, 4, 8]


def test_backoff_delay_uses_the_base():
    assert [queuectl.backoff_delay(n, 3, 3600) for n in (1, 2, 3)] == [3, 9, 27]


def test_backoff_delay_is_capped_by_max_backoff():
    assert queuectl.backoff_delay(10, 2, 60) == 60
    assert queuectl.backoff_delay(5, 2, 0) == 0


def test_backoff_delay_huge_attempts_do_not_overflow():
    assert queuectl.backoff_delay(100_000, 2, 3600) == 3600


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400), (" 5M ", 300),
    ("1.5m", 90), (45, 45), (2.5, 2.5), ("0", 0),
])
def test_parse_duration_accepts(text, seconds):
    assert queuectl.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5", "5x", "", "m", True, -1, float("nan"), float("inf"), "1e3"])
def test_parse_duration_refuses(text):
    with pytest.raises(QueueError):
        queuectl.parse_duration(text)


def test_parse_duration_error_names_the_field():
    with pytest.raises(QueueError, match="timeout"):
        queuectl.parse_duration("soon", "job1: timeout")


def test_parse_time_utc_z():
    assert queuectl.parse_time("2030-01-01T10:00:00Z") == utc(2030, 1, 1, 10)
    assert queuectl.parse_time("2030-01-01T10:00:00z") == utc(2030, 1, 1, 10)
    assert queuectl.parse_time("2030-01-01T10:00:00.250Z") == utc(2030, 1, 1, 10) + 0.25


def test_parse_time_with_offset():
    assert queuectl.parse_time("2030-01-01T10:00:00+02:00") == utc(2030, 1, 1, 8)
    assert queuectl.parse_time("2030-01-01T10:00:00-05:30") == utc(2030, 1, 1, 15, 30)


@pytest.fixture
def tz_plus_3(monkeypatch):
    """Local time is UTC+3 (a POSIX TZ string: needs no time zone database)."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is POSIX only")
    monkeypatch.setenv("TZ", "QQQ-3")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_parse_time_without_offset_is_local_time(tz_plus_3):
    assert queuectl.parse_time("2030-01-01T10:00:00") == utc(2030, 1, 1, 7)
    assert queuectl.parse_time("2030-01-01 10:00") == utc(2030, 1, 1, 7)


@pytest.mark.parametrize("text", ["tomorrow", "2030-13-01T00:00:00", "", "10:00"])
def test_parse_time_refuses(text):
    with pytest.raises(QueueError, match="ISO-8601"):
        queuectl.parse_time(text)


def test_iso_is_utc_with_milliseconds_and_z():
    assert queuectl.iso(NOW) == "2027-01-15T08:00:00.000Z"
    assert queuectl.parse_time(queuectl.iso(NOW + 0.5)) == NOW + 0.5
    assert queuectl.iso(None) is None


# -- normalize_job -------------------------------------------------------------


def test_normalize_job_minimal_gets_defaults():
    job = queuectl.normalize_job({"id": "job1", "command": "echo hi"}, CONFIG, now=NOW)
    assert job == {"id": "job1", "command": "echo hi", "state": "pending", "attempts": 0,
                   "max_retries": 3, "priority": 0, "created_at": "2027-01-15T08:00:00.000Z",
                   "updated_at": "2027-01-15T08:00:00.000Z"}


def test_normalize_job_max_retries_default_comes_from_config():
    job = queuectl.normalize_job({"command": "x"}, dict(CONFIG, max_retries=7), now=NOW)
    assert job["max_retries"] == 7


def test_normalize_job_generates_a_valid_unique_id():
    first = queuectl.normalize_job({"command": "x"}, CONFIG, now=NOW)["id"]
    second = queuectl.normalize_job({"command": "x"}, CONFIG, now=NOW)["id"]
    assert queuectl.ID_PATTERN.match(first) and queuectl.ID_PATTERN.match(second)
    assert first != second


def test_normalize_job_all_fields():
    job = queuectl.normalize_job({"id": "a.b_c-1", "command": "x", "max_retries": 0, "priority": -4,
                                  "run_at": "2030-01-01T00:00:00Z", "timeout": "2m"}, CONFIG, now=NOW)
    assert job["max_retries"] == 0
    assert job["priority"] == -4
    assert job["run_at"] == "2030-01-01T00:00:00.000Z"
    assert job["timeout"] == 120


def test_normalize_job_accepts_whole_numbers_as_strings():
    job = queuectl.normalize_job({"command": "x", "max_retries": "5", "priority": "-2"}, CONFIG, now=NOW)
    assert (job["max_retries"], job["priority"]) == (5, -2)


def test_normalize_job_delay_sets_run_at_from_now():
    job = queuectl.normalize_job({"command": "x", "delay": "90"}, CONFIG, now=NOW)
    assert job["run_at"] == queuectl.iso(NOW + 90)
    job = queuectl.normalize_job({"command": "x", "delay": "5m"}, CONFIG, now=NOW)
    assert job["run_at"] == queuectl.iso(NOW + 300)


def test_normalize_job_run_at_in_the_past_means_now():
    job = queuectl.normalize_job({"command": "x", "run_at": "2000-01-01T00:00:00Z"}, CONFIG, now=NOW)
    assert "run_at" not in job


def test_normalize_job_timeout_zero_means_none():
    job = queuectl.normalize_job({"command": "x", "timeout": 0}, CONFIG, now=NOW)
    assert "timeout" not in job


def test_normalize_job_accepts_a_full_record_of_the_original_spec():
    raw = {"id": "job1", "command": "sleep 2", "state": "pending", "attempts": 0, "max_retries": 3,
           "created_at": "2025-11-04T10:30:00Z", "updated_at": "2025-11-04T10:30:00Z"}
    job = queuectl.normalize_job(raw, CONFIG, now=NOW)
    assert job["state"] == "pending" and job["attempts"] == 0
    assert job["created_at"] == queuectl.iso(NOW)


def test_normalize_job_unknown_field_lists_the_known_ones():
    with pytest.raises(QueueError) as info:
        queuectl.normalize_job({"id": "job1", "comand": "x"}, CONFIG, label="jobs.json line 3", now=NOW)
    message = str(info.value)
    assert "jobs.json line 3" in message and "'comand'" in message
    for field in queuectl.INPUT_FIELDS:
        assert field in message


@pytest.mark.parametrize("raw, words", [
    ({"id": "job1"}, "command"),
    ({"id": "job1", "command": ""}, "command"),
    ({"id": "job1", "command": "   "}, "command"),
    ({"id": "job1", "command": 5}, "command"),
    ({"id": "job1", "command": "echo \x00"}, "NUL"),
    ({"id": "../x", "command": "x"}, "id"),
    ({"id": "a/b", "command": "x"}, "id"),
    ({"id": "-x", "command": "x"}, "id"),
    ({"id": ".x", "command": "x"}, "id"),
    ({"id": "", "command": "x"}, "id"),
    ({"id": "a" * 65, "command": "x"}, "id"),
    ({"id": "job 1", "command": "x"}, "id"),
    ({"id": 5, "command": "x"}, "id"),
    ({"command": "x", "priority": "high"}, "priority"),
    ({"command": "x", "priority": 1.5}, "priority"),
    ({"command": "x", "priority": True}, "priority"),
    ({"command": "x", "priority": 10**12}, "priority"),
    ({"command": "x", "max_retries": -1}, "max_retries"),
    ({"command": "x", "max_retries": "1.5"}, "max_retries"),
    ({"command": "x", "max_retries": False}, "max_retries"),
    ({"command": "x", "run_at": "tomorrow"}, "run_at"),
    ({"command": "x", "run_at": 5}, "run_at"),
    ({"command": "x", "delay": "soon"}, "delay"),
    ({"command": "x", "delay": "-5"}, "delay"),
    ({"command": "x", "run_at": "2030-01-01T00:00:00Z", "delay": "5"}, "run_at or delay"),
    ({"command": "x", "timeout": "abc"}, "timeout"),
    ({"command": "x", "timeout": -1}, "timeout"),
    ({"command": "x", "state": "completed"}, "state"),
    (["echo hi"], "object"),
    ("echo hi", "object"),
])
def test_normalize_job_refuses(raw, words):
    with pytest.raises(QueueError, match=words):
        queuectl.normalize_job(raw, CONFIG, now=NOW)


def test_normalize_job_id_of_64_characters_is_accepted():
    assert queuectl.normalize_job({"id": "a" * 64, "command": "x"}, CONFIG, now=NOW)["id"] == "a" * 64


# -- parsing job input --------------------------------------------------------


def test_parse_job_documents_object():
    assert queuectl.parse_job_documents(' {"id":"a","command":"x"}\n', "f") == [("f", {"id": "a", "command": "x"})]


def test_parse_job_documents_array_labels_items():
    items = queuectl.parse_job_documents('[{"id":"a"}, {"id":"b"}]', "jobs.json")
    assert items == [("jobs.json item 1", {"id": "a"}), ("jobs.json item 2", {"id": "b"})]


def test_parse_job_documents_one_object_per_line_labels_lines():
    text = '{"id":"a"}\n\n{"id":"b"}\r\n{"id":"c"}\n'
    items = queuectl.parse_job_documents(text, "jobs.jsonl")
    assert items == [("jobs.jsonl line 1", {"id": "a"}), ("jobs.jsonl line 3", {"id": "b"}),
                     ("jobs.jsonl line 4", {"id": "c"})]


def test_parse_job_documents_bad_line_is_named():
    with pytest.raises(QueueError, match="jobs.jsonl line 3 is not valid JSON"):
        queuectl.parse_job_documents('{"id":"a"}\n{"id":"b"}\n{"id":"c" "command":"x"}\n', "jobs.jsonl")


@pytest.mark.parametrize("text, words", [("", "empty"), ("  \n ", "empty"), ("{bad", "not valid JSON"),
                                         ("[" * 100_000, "nested|not valid JSON")])
def test_parse_job_documents_refuses(text, words):
    with pytest.raises(QueueError, match=words):
        queuectl.parse_job_documents(text, "input")


def test_decode_input_handles_boms():
    text = '{"command":"echo \u00e9"}'
    assert queuectl.decode_input(text.encode("utf-8"), "f") == text
    assert queuectl.decode_input(b"\xef\xbb\xbf" + text.encode("utf-8"), "f") == text
    assert queuectl.decode_input(b"\xff\xfe" + text.encode("utf-16-le"), "f") == text
    assert queuectl.decode_input(b"\xfe\xff" + text.encode("utf-16-be"), "f") == text
    with pytest.raises(QueueError, match="UTF-8"):
        queuectl.decode_input(b"\x80\x81 not text", "f")


JOB1_SLEEP = {"id": "job1", "command": "sleep 2"}


@pytest.mark.parametrize("text, expected, what", [
    ('{id:job1,command:sleep 2}', JOB1_SLEEP, "PowerShell"),
    ('{id: job1, command: sleep 2}', JOB1_SLEEP, "PowerShell"),
    ('{id:job1}', {"id": "job1"}, "PowerShell"),
    ('{id:job1,command:echo a:b,max_retries:5,priority:-2,delay:30s}',
     {"id": "job1", "command": "echo a:b", "max_retries": 5, "priority": -2, "delay": "30s"}, "PowerShell"),
    ('{id:job1,command:echo,run_at:null}', {"id": "job1", "command": "echo", "run_at": None}, "PowerShell"),
    ('{""id"":""job1"",""command"":""echo""}', {"id": "job1", "command": "echo"}, "doubled"),
    ('{""id"":""job1"",""command"":""sleep 2""}', JOB1_SLEEP, "doubled"),
    ('{\\"id\\":\\"job1\\",\\"command\\":\\"echo hi\\"}', {"id": "job1", "command": "echo hi"}, "backslash"),
])
def test_repair_shell_json_repairs(text, expected, what):
    repaired = queuectl.repair_shell_json(text)
    assert repaired is not None
    value, note = repaired
    assert value == expected
    assert what in note


@pytest.mark.parametrize("text", [
    '{id:job1,foo:bar}',          # an unknown key: not unambiguous, must not be guessed
    '{foo:bar,id:job1}',
    '{foo:bar}',
    'garbage',
    '{id:job1',
    '{"id":"job1"',
    '{}',
    '',
])
def test_repair_shell_json_refuses(text):
    assert queuectl.repair_shell_json(text) is None


def test_parse_json_argument_strict_json_gives_no_note():
    notes: list[str] = []
    items = queuectl.parse_json_argument('{"id":"job1","command":"echo"}', notes.append)
    assert items == [("the JSON argument", {"id": "job1", "command": "echo"})]
    assert notes == []


def test_parse_json_argument_repair_is_reported_once():
    notes: list[str] = []
    items = queuectl.parse_json_argument("{id:job1,command:sleep 2}", notes.append)
    assert items == [("the JSON argument", JOB1_SLEEP)]
    assert len(notes) == 1 and "repaired" in notes[0] and "\n" not in notes[0]


def test_parse_json_argument_unrepairable_shows_input_and_advice():
    with pytest.raises(QueueError) as info:
        queuectl.parse_json_argument("{oops", lambda note: None)
    message = str(info.value)
    assert "'{oops'" in message and "--id" in message and "--file" in message


# -- history files: parse and render ---------------------------------------------

A = {"id": "a", "command": "echo a", "state": "completed", "attempts": 1}
B = {"id": "b", "command": "echo b ] ,", "state": "completed", "attempts": 2}
C = {"id": "c", "command": "echo c", "state": "completed", "attempts": 1}


def lines_of(*jobs: dict) -> list[bytes]:
    return [queuectl.dump_line(job).encode() for job in jobs]


def test_render_array_layout():
    assert queuectl.render_array([]) == b"[\n]\n"
    assert queuectl.render_array(lines_of(A, B)) == b"[\n" + b",\n".join(lines_of(A, B)) + b"\n]\n"


def test_parse_array_file_round_trip():
    data = queuectl.render_array(lines_of(A, B, C))
    assert json.loads(data) == [A, B, C]
    assert queuectl.parse_array_file("p.json", data) == ([A, B, C], lines_of(A, B, C), False)


def test_parse_array_file_empty_array():
    assert queuectl.parse_array_file("p.json", b"[\n]\n") == ([], [], False)
    assert queuectl.parse_array_file("p.json", b"[]") == ([], [], True)


job_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                          lambda inner: st.lists(inner, max_size=3), max_leaves=5)
job_strategy = st.fixed_dictionaries(
    {"id": st.from_regex(queuectl.ID_PATTERN, fullmatch=True), "command": st.text(min_size=1)},
    optional={"output": st.text(), "extra": job_values})


@settings(max_examples=60, deadline=None)
@given(st.lists(job_strategy, max_size=6))
def test_render_then_parse_gives_the_same_jobs(jobs):
    data = queuectl.render_array(lines_of(*jobs))
    parsed, lines, repaired = queuectl.parse_array_file("p.json", data)
    assert parsed == jobs
    assert lines == lines_of(*jobs)
    assert repaired is False


def test_parse_array_file_torn_tail_is_dropped_and_reported():
    whole = queuectl.render_array(lines_of(A, B))
    torn = whole[: -len(b"\n]\n")] + b',\n{"id":"c","comm'
    assert queuectl.parse_array_file("p.json", torn) == ([A, B], lines_of(A, B), True)


@pytest.mark.parametrize("data", [b"", b"  \n"])
def test_an_empty_file_is_an_empty_array_to_repair(data):
    """An append creates the file before its first write: a crash between leaves it empty."""
    assert queuectl.parse_array_file("p.json", data) == ([], [], True)


def test_an_append_torn_after_its_first_byte_keeps_the_job_before_it():
    whole = queuectl.render_array(lines_of(A, B))
    torn = whole[:-3] + b",]\n"  # the append wrote "," over the old "\n]\n" and stopped
    assert queuectl.parse_array_file("p.json", torn) == ([A, B], lines_of(A, B), True)


def test_parse_array_file_missing_closing_bracket_keeps_every_job():
    data = b"[\n" + b",\n".join(lines_of(A, B)) + b",\n"
    assert queuectl.parse_array_file("p.json", data) == ([A, B], lines_of(A, B), True)


@pytest.mark.parametrize("data", [
    b"[\n" + queuectl.dump_line(A).encode() + b",\ngarbage,\n" + queuectl.dump_line(B).encode() + b"\n]\n",
    b"[\n" + queuectl.dump_line(A).encode() + b",\ngarbage,\n" + queuectl.dump_line(B).encode() + b",\n",
    b"[\n" + queuectl.dump_line(A).encode() + b",\n[1],\n" + queuectl.dump_line(B).encode() + b"\n]\n",
    b"{bad",
    b'{"id":"a"}',
    b"[1, 2]",
    b"\xff\xfe[\n]\n",
])
def test_parse_array_file_damage_is_corrupt(data):
    """Damage that no crash of queuectl's own writes can leave is reported, never guessed at."""
    with pytest.raises(CorruptFileError, match="p.json"):
        queuectl.parse_array_file("p.json", data)


def test_parse_array_file_accepts_a_reformatted_file():
    data = json.dumps([A, B], indent=2).encode()
    assert queuectl.parse_array_file("p.json", data) == ([A, B], lines_of(A, B), True)


# -- file names and platform branches ----------------------------------------------


@pytest.mark.parametrize("job_id, name", [
    ("job1", "job1.log"),
    ("a.b_c-1", "a.b_c-1.log"),
    ("CON", "_CON.log"),
    ("con", "_con.log"),
    ("NUL", "_NUL.log"),
    ("com1.txt", "_com1.txt.log"),
    ("LPT9", "_LPT9.log"),
    ("CONSOLE", "CONSOLE.log"),
    ("job.", "job..log"),  # the name ends in .log, so Windows drops no dot
    ("job...", "job....log"),
    ("a/b\\c:d", "a_b_c_d.log"),
])
def test_safe_log_name(job_id, name):
    assert queuectl.safe_log_name(job_id) == name


@pytest.mark.parametrize("job_id", ["../x", "..", "a" * 64, "x/../../etc/passwd"])
def test_safe_log_name_never_leaves_the_logs_folder(job_id):
    name = queuectl.safe_log_name(job_id)
    assert "/" not in name and "\\" not in name
    assert os.path.normpath(os.path.join("logs", name)).startswith("logs" + os.sep)
    assert len(name) <= 64 + len(".log")


def test_popen_options_per_platform():
    assert queuectl.popen_options("win32") == {"creationflags": 0x00000200}
    assert queuectl.popen_options("linux") == {"start_new_session": True}
    assert queuectl.popen_options("darwin") == {"start_new_session": True}


def test_tree_kill_command_per_platform():
    assert queuectl.tree_kill_command(4242, "win32") == ["taskkill", "/T", "/F", "/PID", "4242"]
    assert queuectl.tree_kill_command(4242, "linux") is None


class FlakyReplace:
    """A fake os.replace that fails with a sharing violation `failures` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[str, str]] = []

    def __call__(self, src: str, dst: str) -> None:
        self.calls.append((src, dst))
        if len(self.calls) <= self.failures:
            error = PermissionError(13, "The process cannot access the file")
            error.winerror = 32  # type: ignore[attr-defined]
            raise error


def test_replace_with_retry_on_windows_retries_permission_errors():
    fake = FlakyReplace(failures=2)
    queuectl.replace_with_retry("a.tmp", "a.json", platform="win32", replace=fake)
    assert fake.calls == [("a.tmp", "a.json")] * 3


def test_replace_with_retry_on_windows_gives_up_at_the_deadline():
    fake = FlakyReplace(failures=10**6)
    started = time.monotonic()
    with pytest.raises(PermissionError):
        queuectl.replace_with_retry("a.tmp", "a.json", platform="win32", replace=fake, deadline_s=0.1)
    assert len(fake.calls) >= 2
    assert time.monotonic() - started < 2


def test_replace_with_retry_on_linux_does_not_retry():
    fake = FlakyReplace(failures=1)
    with pytest.raises(PermissionError):
        queuectl.replace_with_retry("a.tmp", "a.json", platform="linux", replace=fake)
    assert len(fake.calls) == 1
    fake = FlakyReplace(failures=0)
    queuectl.replace_with_retry("a.tmp", "a.json", platform="linux", replace=fake)
    assert fake.calls == [("a.tmp", "a.json")]


def test_pid_alive_on_linux():
    assert queuectl.pid_alive(os.getpid(), "linux") is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert queuectl.pid_alive(child.pid, "linux") is False
    assert queuectl.pid_alive(0, "linux") is False
    assert queuectl.pid_alive(-1, "linux") is False


def test_pid_alive_on_windows_never_calls_os_kill(monkeypatch):
    asked: list[int] = []

    def fake_probe(pid: int) -> bool:
        asked.append(pid)
        return pid == 1234

    def no_kill(*args: object) -> None:
        raise AssertionError("os.kill must not be used as a probe on Windows")

    monkeypatch.setattr(queuectl, "_windows_pid_alive", fake_probe)
    monkeypatch.setattr(queuectl.os, "kill", no_kill)
    assert queuectl.pid_alive(1234, "win32") is True
    assert queuectl.pid_alive(999, "win32") is False
    assert queuectl.pid_alive(0, "win32") is False
    assert asked == [1234, 999]


# -- configuration values ---------------------------------------------------------


@pytest.mark.parametrize("key, value, expected", [
    ("max_retries", "5", 5),
    ("max_retries", 0, 0),
    ("max_retries", " 7 ", 7),
    ("backoff_base", "3", 3),
    ("backoff_base", "2.5", 2.5),
    ("backoff_base", 1, 1),
    ("max_backoff", "0", 0),
    ("job_timeout", "0", 0),
    ("job_timeout", "30.5", 30.5),
    ("lease_timeout", "1", 1),
    ("poll_interval", "0.25", 0.25),
    ("failure_rate", "0.5", 0.5),
    ("failure_rate", "1", 1.0),
])
def test_validate_config_value_accepts(key, value, expected):
    result = queuectl.validate_config_value(key, value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("key, value", [
    ("max_retries", "abc"), ("max_retries", "1.5"), ("max_retries", 1.5), ("max_retries", "-1"),
    ("max_retries", True), ("max_retries", "1001"), ("max_retries", None),
    ("backoff_base", "0.5"), ("backoff_base", "abc"), ("backoff_base", "nan"), ("backoff_base", [2]),
    ("max_backoff", "-1"), ("max_backoff", "inf"),
    ("job_timeout", "-1"),
    ("lease_timeout", "0"),
    ("poll_interval", "0"), ("poll_interval", "61"),
    ("failure_rate", "-0.1"), ("failure_rate", "1.1"),
])
def test_validate_config_value_refuses(key, value):
    with pytest.raises(QueueError, match=key):
        queuectl.validate_config_value(key, value)


@pytest.mark.parametrize("key", ["max_retries", "max-retries", "MAX_RETRIES", " backoff-base "])
def test_config_key_accepts_underscore_or_dash(key):
    assert queuectl.config_key(key) in queuectl.DEFAULT_CONFIG


def test_config_key_unknown_lists_the_known_ones():
    with pytest.raises(QueueError) as info:
        queuectl.config_key("retries")
    for key in queuectl.DEFAULT_CONFIG:
        assert key in str(info.value)


@pytest.mark.parametrize("text, state", [("pending", "pending"), ("processed", "completed"), ("dlq", "dead"),
                                         ("DEAD", "dead"), ("failed", "failed")])
def test_normalize_state_synonyms(text, state):
    assert queuectl.normalize_state(text) == state


def test_defaults_match_the_contract():
    assert queuectl.DEFAULT_CONFIG == {"max_retries": 3, "backoff_base": 2, "max_backoff": 3600, "job_timeout": 0,
                                       "lease_timeout": 30, "poll_interval": 0.5, "failure_rate": 0.0,
                                       "log_max_bytes": 10 * 1024 * 1024, "shell": "auto", "listen": True}


def test_iso_round_trips_through_parse_time_for_any_moment():
    moment = datetime(2031, 5, 6, 7, 8, 9, 123000, tzinfo=timezone.utc)
    text = queuectl.iso(moment.timestamp())
    assert text == "2031-05-06T07:08:09.123Z"
    assert abs(queuectl.parse_time(text) - moment.timestamp()) < 1e-6
    assert datetime.fromtimestamp(queuectl.parse_time(text), timezone.utc) - moment < timedelta(milliseconds=1)


def test_distinct_ids_get_distinct_log_names():
    ids = ["job", "job.", "job..", "CON", "con", "CON.", "a.b", "a..b"]
    assert len({queuectl.safe_log_name(job_id) for job_id in ids}) == len(ids)


@pytest.mark.parametrize("has_pwrite", [True, False])
def test_write_pid_fills_the_header_without_moving_the_commands_offset(tmp_path, has_pwrite):
    path = tmp_path / "scratch.out"
    identity = queuectl.WorkerIdentity()
    header = queuectl.attempt_header("job1", 1, 0.0, "Worker-1", identity)
    with open(path, "w+b") as out:
        out.write(header)
        out.flush()
        queuectl.write_pid(out.fileno(), str(path), 4242, len(header) - queuectl.PID_FIELD - 1, has_pwrite)
        out.write(b"output\n")  # the command goes on writing where it was
        out.flush()
    data = path.read_bytes()
    filled = header.replace(b"?" + b" " * (queuectl.PID_FIELD - 1), b"4242".ljust(queuectl.PID_FIELD))
    assert data == filled + b"output\n"
    assert queuectl.scratch_attempt(data.splitlines()[0] + b"\n")


def test_every_command_is_listed_for_the_parser_that_builds_one_branch():
    parser = queuectl.build_parser()
    names = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert tuple(names) == queuectl.COMMANDS


@pytest.mark.parametrize("argv, name", [
    (["enqueue", "--id", "x"], "enqueue"), (["--home", "status", "list"], "list"), (["--home=d", "show", "x"], "show"),
    (["-h", "status"], None), (["statsu"], None), ([], None), (["--version"], None),
])
def test_command_named_finds_the_branch_to_build(argv, name):
    assert queuectl.command_named(argv) == name
