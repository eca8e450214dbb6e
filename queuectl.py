"""queuectl: a job queue for shell commands that lives in a folder.

Enqueue shell commands as JSON jobs, start workers, and the workers run the
commands in parallel, retry failures with exponential backoff, and park jobs
that keep failing in a Dead Letter Queue (DLQ). All state is plain JSON in the
data folder (``--home``, else ``$QUEUECTL_HOME``, else the current folder)::

    queuectl enqueue --id hello --command "echo hello"
    queuectl worker start --count 4 --burst
    queuectl status

The file reads top to bottom, each section using only those above it: constants
and errors, the job model, processes on this host, the rules (what becomes of a
job, the same for every store), the record of an attempt, the store interface
(BaseStore: the queue in queue verbs), the folder store (the only code that
touches the data folder), running one attempt, the worker, the command line, the
dashboard, and main. A queue elsewhere (PostgreSQL) is another BaseStore, in a
module of its own that open_store imports only for its URL.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import itertools
import json
import math
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (2 ms of every start)
if TYPE_CHECKING:
    import subprocess
    from typing import Any

# subprocess, signal, socket, datetime and random are imported where they are
# used: a one-shot command such as `enqueue` should not pay for the worker's.

__version__ = "0.1.0"


# --------------------------------------------------------------------------
# 1. Constants, defaults, errors
# --------------------------------------------------------------------------


QUEUE_FILE = "queue.json"
PROCESSED_FILE = "processed.json"
FAILED_FILE = "failed.json"
CANCELLED_FILE = "cancelled.json"
CONFIG_FILE = "config.json"
STOP_FILE = "stop.flag"
PAUSE_FILE = "pause.flag"
HISTORY_INDEX_FILE = "history.idx"
LOCK_FILE = "queuectl.lock"
STATE_FILES = (QUEUE_FILE, PROCESSED_FILE, FAILED_FILE, CANCELLED_FILE, CONFIG_FILE, STOP_FILE, PAUSE_FILE)
LOGS_DIR = "logs"
LATE_DIR = "late"  # in logs/: what processes an attempt left running wrote after it ended
WORKERS_DIR = "workers"

ACTIVE_STATES = ("pending", "processing", "failed")
FINISHED_STATES = ("completed", "dead", "cancelled")
STATES = ACTIVE_STATES + FINISHED_STATES
STATE_SYNONYMS = {"processed": "completed", "dlq": "dead", "canceled": "cancelled"}
HISTORY_FILE_OF = {"completed": PROCESSED_FILE, "dead": FAILED_FILE, "cancelled": CANCELLED_FILE}
STATE_OF_FILE = {name: state for state, name in HISTORY_FILE_OF.items()}

DEFAULT_CONFIG: dict[str, Any] = {
    "max_retries": 3,
    "backoff_base": 2,
    "max_backoff": 3600,
    "job_timeout": 0,
    "lease_timeout": 30,
    "poll_interval": 0.5,
    "failure_rate": 0.0,
    "log_max_bytes": 10 * 1024 * 1024,
    "shell": "auto",
    "listen": True,  # PostgreSQL: LISTEN/NOTIFY wakes idle workers at once (off for PgBouncer's transaction mode)
}

# The shells a job can run in (config key and job field `shell`); auto is the
# platform's: /bin/sh on POSIX, cmd.exe on Windows.
SHELLS = ("auto", "sh", "bash", "cmd", "powershell", "pwsh")

LOCK_TIMEOUT = 30.0
OUTPUT_TAIL_BYTES = 4096
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def this_host(platform: str = sys.platform) -> str:
    """The host name workers record (os.uname is free; socket costs an import)."""
    if platform != "win32":
        return os.uname().nodename
    import socket

    return socket.gethostname()


HOST = this_host()
MAX_EPOCH = 253402300799.0  # 9999-12-31T23:59:59Z: the last time ISO-8601 with four digits can say


class QueueError(Exception):
    """An error the user can fix: printed as one sentence, exit code 1."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NoSuchJob(QueueError):
    """No job has this id (anywhere in the queue or its history)."""


class JobExists(QueueError):
    """The id asked for is taken, by an active or a finished job."""


class StoreError(QueueError):
    """Where the queue lives cannot do what was asked: its state is damaged, its lock is held
    too long, or it cannot be reached. Nothing was changed."""


class StoreUnavailable(StoreError):
    """The queue cannot be reached at all (a location no store can open, a server that is down)."""


class LockTimeout(StoreError):
    """Another process has held the queue's lock for longer than LOCK_TIMEOUT."""


class CorruptFileError(StoreError):
    """A state file that does not parse; it is never overwritten."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"{path} is not valid queuectl state ({detail}); nothing was changed. "
            "Fix or move the file away (keep a copy), then run the command again."
        )


class WorkerFault(QueueError):
    """The worker cannot write its own files (scratch files, heartbeat): a fault of
    the worker, not of the job it was about to run."""


# --------------------------------------------------------------------------
# 2. The job model: validation, normalisation, parsing of job input, settings
# --------------------------------------------------------------------------


# Fields a user may give, and fields queuectl keeps itself (accepted on input
# so a full record from the original specification can be enqueued again).
INPUT_FIELDS = ("id", "command", "max_retries", "priority", "run_at", "delay", "timeout", "shell", "cwd", "env",
                "after")
RECORD_FIELDS = ("state", "attempts", "created_at", "updated_at")
INT_FIELDS = ("max_retries", "priority")


def now_ts() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """UTC ISO-8601 with milliseconds and a Z, e.g. 2026-11-28T07:45:59.123Z."""
    if ts is None:
        return None
    millis = int(round(ts * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z"


_ISO_UTC = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?Z\Z")


_DAY_EPOCH: dict[str, float] = {}  # "YYYY-MM-DD" -> its midnight in epoch seconds


def _utc_epoch(text: str) -> float | None:
    """Epoch seconds of the timestamps queuectl writes, without datetime (hot path: `stats`
    reads several per finished job). The exact layout queuectl writes takes a shortcut."""
    if (len(text) == 24 and text[10] == "T" and text[13] == text[16] == ":" and text[19] == "." and text[23] == "Z"
            and text[11:13].isdigit() and text[14:16].isdigit() and text[17:19].isdigit() and text[20:23].isdigit()):
        day = _DAY_EPOCH.get(text[:10])
        if day is None:
            whole = _utc_epoch(text[:10] + "T00:00:00Z")
            if whole is None:
                return None
            day = _DAY_EPOCH[text[:10]] = whole
        return day + int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19]) + int(text[20:23]) / 1000
    match = _ISO_UTC.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = match.group(7) or "0"
    # days since 1970-01-01 from the civil date (Howard Hinnant's algorithm)
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + hour * 3600 + minute * 60 + second + int(fraction) / 10 ** len(fraction)


def parse_time(text: str) -> float:
    """ISO-8601 to epoch seconds; without an offset it means local time."""
    from datetime import datetime

    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise QueueError(
            f"run_at {text!r} is not an ISO-8601 time; use e.g. 2026-12-01T09:00:00Z "
            "or 2026-12-01 09:00 (local time)."
        ) from None
    try:
        if moment.tzinfo is None:
            moment = moment.astimezone()
        seconds = moment.timestamp()
    except (ValueError, OverflowError, OSError):
        seconds = -1.0
    if not 0 <= seconds <= MAX_EPOCH:
        raise QueueError(f"run_at {text!r} is out of range; use a time from 1970-01-01T00:00:00Z "
                         "to 9999-12-31T23:59:59Z.")
    return seconds


_EPOCH_CACHE: dict[str, float] = {}


def _epoch(text: str | None) -> float:
    """Epoch seconds of a stored timestamp (cached: the same strings recur). Anything
    that is not a timestamp string (a hand-edited file) counts as the epoch."""
    if not text or type(text) is not str:
        return 0.0
    value = _EPOCH_CACHE.get(text)
    if value is not None:
        return value
    value = _utc_epoch(text)
    if value is None:
        try:
            value = parse_time(text)
        except QueueError:
            value = 0.0
    if len(_EPOCH_CACHE) > 100_000:
        _EPOCH_CACHE.clear()
    _EPOCH_CACHE[text] = value
    return value


DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: Any, what: str = "delay") -> float:
    """'90', '90s', '5m', '2h', '1d' (or a number) to seconds."""
    if isinstance(text, bool):
        raise QueueError(f"{what} must be a duration like 90, 90s, 5m or 2h.")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
        if not match:
            raise QueueError(f"{what} {text!r} is not a duration; use e.g. 90, 90s, 5m or 2h.")
        seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)]
    if math.isnan(seconds) or seconds < 0 or math.isinf(seconds):
        raise QueueError(f"{what} must be a duration of zero or more seconds.")
    if seconds > 1e9:
        raise QueueError(f"{what} {text!r} is too long; the most is 1e9 seconds (about 31 years).")
    return seconds


def _check_int(job_label: str, name: str, value: Any, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        else:
            raise QueueError(f"{job_label}: {name} must be a whole number, not {value!r}.")
    if minimum is not None and value < minimum:
        raise QueueError(f"{job_label}: {name} must be {minimum} or more, not {value}.")
    if abs(value) > 10**9:
        raise QueueError(f"{job_label}: {name} {value} is out of range.")
    return value


def new_job_id() -> str:
    return f"job-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


def _valid_id(label: str, job_id: Any) -> str:
    if not isinstance(job_id, str) or not ID_PATTERN.match(job_id):
        raise QueueError(f"{label}: id {job_id!r} is not valid; use 1-64 letters, digits, '.', '_' "
                         "or '-', starting with a letter or digit.")
    return job_id


def _valid_command(label: str, command: Any) -> str:
    if not isinstance(command, str) or not command.strip():
        raise QueueError(f"{label}: command is required and must be a non-empty string.")
    if "\x00" in command:
        raise QueueError(f"{label}: command must not contain a NUL character.")
    if not utf8_text(command):
        raise QueueError(f"{label}: command holds bytes that are not UTF-8 text; "
                         "put it in a script file and enqueue a command that runs it.")
    return command


def _valid_timeout(label: str, timeout: Any) -> float | None:
    return parse_duration(timeout, f"{label}: timeout") or None  # 0: no timeout


def _valid_shell(label: str, shell: Any) -> str:
    if not isinstance(shell, str) or shell.strip().lower() not in SHELLS:
        raise QueueError(f"{label}: shell must be one of {', '.join(SHELLS)}, not {shell!r}.")
    return shell.strip().lower()


def utf8_text(text: str) -> bool:
    """False for a str that holds bytes that were not UTF-8 (a file name's, escaped by Python)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _valid_cwd(label: str, cwd: Any) -> str:
    if not isinstance(cwd, str) or not cwd.strip() or "\x00" in cwd:
        raise QueueError(f"{label}: cwd must be a directory's path, not {cwd!r}.")
    if not utf8_text(cwd):
        raise QueueError(f"{label}: cwd {cwd!r} is not UTF-8 text; give a directory whose name is.")
    return cwd  # normalize_job makes it absolute, against the directory enqueue runs in


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
WORKER_ENV = ("QUEUECTL_ATTEMPT",)  # the worker's to set: how recovery finds a command


def _valid_env(label: str, env: Any) -> dict[str, str]:
    if not isinstance(env, dict):
        raise QueueError(f'{label}: env must be an object of names and strings, like {{"MODE": "fast"}}.')
    for name, value in env.items():
        if not ENV_NAME.match(name):
            raise QueueError(f"{label}: env: {name!r} is not a variable name (letters, digits and _, "
                             "not starting with a digit).")
        if name.upper() in WORKER_ENV:
            raise QueueError(f"{label}: env: {name} is set by the worker for each attempt and cannot be given.")
        if not isinstance(value, str) or "\x00" in value or not utf8_text(value):
            raise QueueError(f"{label}: env: the value of {name} must be UTF-8 text without NUL characters, "
                             f"not {value!r}.")
    return dict(env)


def _valid_after(label: str, after: Any) -> list[str]:
    """The ids of the jobs this one waits for: a list, or one string of ids separated by commas."""
    items = after.split(",") if isinstance(after, str) else after
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise QueueError(f'{label}: after must list job ids, like ["build", "test"] or "build,test".')
    ids = list(dict.fromkeys(item.strip() for item in items if item.strip()))
    for job_id in ids:
        if not ID_PATTERN.match(job_id):
            raise QueueError(f"{label}: after: {job_id!r} is not a job id.")
    if not ids:
        raise QueueError(f"{label}: after names no job.")
    return ids


def _valid_run_at(label: str, run_at: Any) -> float:
    if not isinstance(run_at, str):
        raise QueueError(f"{label}: run_at must be an ISO-8601 string.")
    return parse_time(run_at)


# The check of each field a user may give, in the order they are checked: each returns the value
# to keep, or raises QueueError naming the job and the field.
FIELD_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "id": _valid_id,
    "command": _valid_command,
    "max_retries": lambda label, value: _check_int(label, "max_retries", value, 0),
    "priority": lambda label, value: _check_int(label, "priority", value, None),
    "timeout": _valid_timeout,
    "shell": _valid_shell,
    "run_at": _valid_run_at,
    "delay": lambda label, value: parse_duration(value, f"{label}: delay"),
    "cwd": _valid_cwd,
    "env": _valid_env,
    "after": _valid_after,
}


def normalize_job(raw: Any, config: dict[str, Any], label: str = "job", now: float | None = None,
                  here: str | None = None) -> dict[str, Any]:
    """Validate user input and return a new pending job record.

    Unknown fields are errors (a typo like ``comand`` must not vanish), and the
    record fields of the original specification are accepted but reset. `here` is the
    directory enqueue runs in: the job's cwd unless it names one (a relative one is taken from
    there).
    """
    if not isinstance(raw, dict):
        raise QueueError(f"{label}: a job must be a JSON object like "
                         '{"id": "job1", "command": "echo hi"}.')
    unknown = [k for k in raw if k not in INPUT_FIELDS and k not in RECORD_FIELDS]
    if unknown:
        raise QueueError(f"{label}: unknown field {', '.join(map(repr, unknown))}; "
                         f"known fields are {', '.join(INPUT_FIELDS)}.")
    if "state" in raw and raw["state"] not in (None, "pending"):
        raise QueueError(f"{label}: a new job's state can only be 'pending', not {raw['state']!r}.")
    if raw.get("run_at") is not None and raw.get("delay") is not None:
        raise QueueError(f"{label}: give run_at or delay, not both.")
    now = now_ts() if now is None else now
    given = dict(raw, id=new_job_id()) if raw.get("id") is None else raw
    fields = {name: check(label, given.get(name)) for name, check in FIELD_CHECKS.items()
              if given.get(name) is not None or name == "command"}  # a command is required
    run_at = fields.get("run_at")
    if "delay" in fields:
        run_at = now + fields["delay"]
        if run_at > MAX_EPOCH:
            raise QueueError(f"{label}: delay {raw['delay']!r} reaches past the year 9999.")
    job: dict[str, Any] = {
        "id": fields["id"],
        "command": fields["command"],
        "state": "pending",
        "attempts": 0,
        "max_retries": fields.get("max_retries", config["max_retries"]),
        "priority": fields.get("priority", 0),
        "created_at": iso(now),
        "updated_at": iso(now),
    }
    if run_at is not None and run_at > now:
        job["run_at"] = iso(run_at)
    for name in ("timeout", "shell", "env", "after"):
        if fields.get(name) is not None:
            job[name] = fields[name]
    if job["id"] in job.get("after", ()):
        raise QueueError(f"{label}: job {job['id']!r} cannot wait for itself.")
    cwd = fields.get("cwd")
    if cwd is not None:
        cwd = os.path.expanduser(cwd)
        if not os.path.isabs(cwd) and here is None:
            raise QueueError(f"{label}: cwd {cwd!r} is relative; give an absolute path.")
        job["cwd"] = os.path.normpath(os.path.join(here or "", cwd))
    elif here is not None:
        job["cwd"] = here
    return job


# What queuectl itself writes into a job (export writes every field; import takes these back).
OUTCOME_FIELDS = ("started_at", "finished_at", "first_started_at", "exit_code", "error", "output", "duration",
                  "worker", "warning", "pid", "host", "cancel_requested_at", "waiting_for")


RESTORED_FIELDS = frozenset(INPUT_FIELDS + RECORD_FIELDS + OUTCOME_FIELDS) - {"delay"}
STORED_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z\Z")  # as iso() writes them


def restored_job(raw: Any, label: str) -> dict[str, Any]:
    """A job as `export` wrote it, checked field by field (import brings it back)."""
    if not isinstance(raw, dict):
        raise QueueError(f"{label}: each line must be a job object as queuectl export writes it.")
    unknown = [key for key in raw if key not in RESTORED_FIELDS]
    if unknown:
        raise QueueError(f"{label}: unknown field {', '.join(map(repr, unknown))}.")
    if raw.get("state") not in STATES:
        raise QueueError(f"{label}: state must be one of {', '.join(STATES)}, not {raw.get('state')!r}.")
    job = dict(raw)
    label = f"{label} ({raw.get('id')!r})" if isinstance(raw.get("id"), str) else label
    for name, check in FIELD_CHECKS.items():
        if name in ("id", "command") or (raw.get(name) is not None and name not in ("run_at", "delay")):
            job[name] = check(label, raw.get(name))
    for name in ("run_at", "created_at", "updated_at", "started_at", "finished_at", "first_started_at"):
        value = raw.get(name)
        if value is not None and not (isinstance(value, str) and STORED_TIME.match(value)):
            try:  # not as queuectl writes times: any ISO-8601 time will do
                _valid_run_at(label, value)
            except QueueError:
                raise QueueError(f"{label}: {name} {value!r} is not an ISO-8601 time.") from None
    for name in ("created_at", "updated_at"):
        if not isinstance(raw.get(name), str):
            raise QueueError(f"{label}: {name} is missing.")
    attempts = raw.get("attempts")
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        raise QueueError(f"{label}: attempts must be a whole number, 0 or more, not {attempts!r}.")
    if job["state"] in FINISHED_STATES and not isinstance(raw.get("finished_at"), str):
        raise QueueError(f"{label}: a {job['state']} job needs its finished_at.")
    if raw.get("waiting_for") is not None:
        job["waiting_for"] = _valid_after(f"{label}: waiting_for", raw["waiting_for"])
    return job


def decode_input(data: bytes, source: str) -> str:
    """Bytes from a file or stdin: UTF-16 with a BOM (PowerShell 5.1), else UTF-8."""
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise QueueError(f"{source} is not UTF-8 or UTF-16 text; save it as UTF-8.") from None


def parse_job_documents(text: str, source: str) -> list[tuple[str, Any]]:
    """An object, an array of objects, or one object per line -> [(label, object)]."""
    text = text.strip()
    if not text:
        raise QueueError(f"{source} is empty; expected a JSON object, an array, or one object per line.")
    try:
        value = json.loads(text)
    except RecursionError:
        raise QueueError(f"{source} is nested too deeply to be a job.") from None
    except ValueError as whole_error:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            raise QueueError(f"{source} is not valid JSON: {whole_error}.") from None
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((f"{source} line {number}", json.loads(line)))
            except (ValueError, RecursionError) as error:
                raise QueueError(f"{source} line {number} is not valid JSON: {error}.") from None
        return items
    if isinstance(value, list):
        return [(f"{source} item {n}", item) for n, item in enumerate(value, 1)]
    return [(source, value)]


def repair_shell_json(text: str) -> tuple[Any, str] | None:
    """Undo what shells are known to do to JSON quotes, or None.

    Tried only after strict JSON failed: doubled quotes ("" from cmd or
    PowerShell idioms), backslash-escaped quotes that reached us literally
    (the Windows PowerShell 5.1 idiom run under pwsh 7.3+), and the
    quote-stripped form {id:job1,command:sleep 2} that Windows PowerShell 5.1
    produces, accepted only when every key is a known job field.
    """
    candidates = []
    if '""' in text:
        candidates.append((text.replace('""', '"'), 'doubled quotes ("") were collapsed'))
    if '\\"' in text:
        candidates.append((text.replace('\\"', '"'), 'backslash-escaped quotes (\\") were unescaped'))
    for fixed, what in candidates:
        try:
            return json.loads(fixed), what
        except (ValueError, RecursionError):
            continue
    stripped = text.strip()
    if stripped.startswith("{") and stripped.endswith("}") and '"' not in stripped:
        known = INPUT_FIELDS + RECORD_FIELDS
        body = stripped[1:-1].strip()
        # Every "name:" after a comma counts as a key; one that is not a job
        # field makes the text ambiguous, and it is refused rather than guessed.
        marks = list(re.finditer(r"(?:^|,)\s*([A-Za-z_][A-Za-z0-9_-]*)\s*:", body))
        if not marks or marks[0].start() != 0 or any(m.group(1) not in known for m in marks):
            return None
        job: dict[str, Any] = {}
        for mark, following in zip(marks, marks[1:] + [None]):
            end = following.start() if following else len(body)
            value: Any = body[mark.end():end].strip()
            if mark.group(1) in INT_FIELDS + ("attempts",) and re.fullmatch(r"-?\d+", value):
                value = int(value)
            elif value == "null":
                value = None
            elif "\\" in value:  # the JSON escapes the shell left in place: \\ is one backslash
                try:
                    value = json.loads(f'"{value}"')
                except ValueError:
                    return None
            job[mark.group(1)] = value
        return job, "the quotes PowerShell stripped were restored"
    return None


QUOTING_ADVICE = (
    "Quoting that works in every shell: --id ID --command \"...\", or --file jobs.json, "
    "or pipe the JSON to 'queuectl enqueue --file -'. In bash and pwsh 7.3+: "
    "--json '{\"id\":\"job1\",\"command\":\"sleep 2\"}'."
)


def looks_split(first: str) -> bool:
    """Is this argument the start of a JSON object that the shell cut into pieces?"""
    if not first.lstrip("'").startswith("{"):
        return False
    try:
        json.loads(first)
    except (ValueError, RecursionError):
        return True
    return False


def split_json_message(pieces: list[str]) -> str:
    """JSON that a shell cut into several arguments: PowerShell at every \" of bash-style
    quoting (rows R5/R6 of notes/windows.md), cmd.exe and PowerShell 5.1 at a space their
    quote counting left outside quotes. The whitespace is lost, so say so, not guess."""
    return (f"the JSON arrived in {len(pieces)} pieces {pieces}: the shell split it (PowerShell splits "
            f'"{{\\"id\\":...}}" at every \\", cmd.exe at spaces outside its quotes). {QUOTING_ADVICE}')


def parse_json_argument(text: str, warn: Callable[[str], None]) -> list[tuple[str, Any]]:
    """Strict JSON first; then the known shell repairs, each reported on stderr."""
    try:
        return parse_job_documents(text, "the JSON argument")
    except QueueError as strict_error:
        repaired = repair_shell_json(text.strip())
        if repaired is None:
            shown = text if len(text) <= 200 else text[:200] + "..."
            raise QueueError(f"{strict_error} Received: {shown!r}. {QUOTING_ADVICE}") from None
        value, what = repaired
        warn(f"note: the JSON argument was repaired ({what}); it was read as {json.dumps(value)}")
        return [("the JSON argument", value)]


def config_key(key: str, source: str = "") -> str:
    name = key.strip().replace("-", "_").lower()
    if name not in DEFAULT_CONFIG:
        where = f" in {source}" if source else ""
        raise QueueError(f"unknown config key {key!r}{where}; known keys: "
                         f"{', '.join(DEFAULT_CONFIG)}.")
    return name


CONFIG_RULES: dict[str, tuple[type, float, float | None]] = {
    # key: (type, minimum, maximum)
    "max_retries": (int, 0, 1000),
    "backoff_base": (float, 1, 1000),
    "max_backoff": (float, 0, None),
    "job_timeout": (float, 0, None),
    "lease_timeout": (float, 1, None),
    "poll_interval": (float, 0.01, 60),
    "failure_rate": (float, 0, 1),
    "log_max_bytes": (int, 1024, None),
}


def validate_config_value(name: str, value: Any) -> Any:
    if name == "listen":
        words = {"true": True, "on": True, "yes": True, "1": True,
                 "false": False, "off": False, "no": False, "0": False}
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in words:
            return words[value.strip().lower()]
        raise QueueError(f"listen must be on or off (true or false), not {value!r}.")
    if name == "shell":
        if not isinstance(value, str) or value.strip().lower() not in SHELLS:
            raise QueueError(f"shell must be one of {', '.join(SHELLS)}, not {value!r}.")
        return value.strip().lower()
    kind, low, high = CONFIG_RULES[name]
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if kind is int else float(text)
        except ValueError:
            raise QueueError(f"{name} must be {'a whole number' if kind is int else 'a number'}, "
                             f"not {text!r}.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise QueueError(f"{name} must be {'a whole number' if kind is int else 'a number'}, not {value!r}.")
    if math.isnan(value) or math.isinf(value):
        raise QueueError(f"{name} must be a finite number.")
    if value < low or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"{low:g} or more"
        raise QueueError(f"{name} must be {bounds}, not {value:g}.")
    if kind is float and isinstance(DEFAULT_CONFIG[name], float):
        return float(value)
    if kind is float and float(value).is_integer():
        return int(value)
    return value


# --------------------------------------------------------------------------
# 3. Processes on this host: pid probes, shells, process-tree kill
# --------------------------------------------------------------------------


def pid_alive(pid: int, platform: str = sys.platform) -> bool:
    """Is this process running? Never os.kill(pid, 0) on Windows (it is not a probe there)."""
    if pid <= 0:
        return False
    if platform == "win32":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """An exited process its parent has not reaped yet (Linux; elsewhere: no)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _windows_pid_alive(pid: int) -> bool:
    import ctypes  # Windows only

    # use_last_error: OpenProcess's error must be kept for get_last_error (windll's is not)
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    synchronize, wait_timeout = 0x00100000, 0x00000102
    handle = kernel32.OpenProcess(synchronize, False, pid)
    if not handle:
        return ctypes.get_last_error() == 5  # access denied: it exists
    try:
        return kernel32.WaitForSingleObject(handle, 0) == wait_timeout
    finally:
        kernel32.CloseHandle(handle)


def command_environment(base: Mapping[str, str], *layers: Mapping[str, str],
                        platform: str = sys.platform) -> dict[str, str]:
    """`base` with each layer's variables set over it, in order. Windows takes names in any case
    as one: a layer's `Path` replaces the base's `PATH` rather than standing beside it."""
    env = dict(base)
    for layer in layers:
        for name, value in layer.items():
            if platform == "win32":
                for same in [key for key in env if key.upper() == name.upper()]:
                    del env[same]
            env[name] = value
    return env


def popen_options(platform: str = sys.platform) -> dict[str, Any]:
    """Start each job in its own process group, so a tree kill reaches its children
    and the terminal's Ctrl+C does not."""
    if platform == "win32":
        return {"creationflags": 0x00000200}  # CREATE_NEW_PROCESS_GROUP
    return {"start_new_session": True}


# Runs first in a PowerShell job: UTF-8 output (5.1 writes the OEM code page otherwise).
POWERSHELL_PROLOGUE = ("try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch {}\n"
                       "$OutputEncoding = New-Object System.Text.UTF8Encoding $false\n"
                       "$ProgressPreference = 'SilentlyContinue'\n")
# Runs last: a failed last statement is a failed job, with the native program's exit code if any.
POWERSHELL_EPILOGUE = "\nif (-not $?) { if ($LASTEXITCODE) { exit $LASTEXITCODE } else { exit 1 } }\n"


def shell_invocation(command: str, shell: str, platform: str = sys.platform,
                     comspec: str | None = None) -> tuple[str | list[str], bool]:
    """How to start a job's command in the chosen shell: (args, shell=) for Popen.

    auto lets subprocess choose (/bin/sh -c on POSIX, %COMSPEC% /c on Windows).
    PowerShell gets the command as -EncodedCommand (base64 of UTF-16LE), so no
    quoting layer can change it, and runs without profile or prompts.
    """
    windows = platform == "win32"
    if shell == "auto":
        return command, True
    if shell in ("sh", "bash"):
        return ["/bin/sh" if shell == "sh" and not windows else shell, "-c", command], False
    if shell == "cmd":
        if windows:  # what subprocess builds for shell=True: cmd's own parsing of the rest of the line
            return f'{comspec or os.environ.get("COMSPEC", "cmd.exe")} /c "{command}"', False
        return ["cmd.exe", "/c", command], False
    import base64

    script = POWERSHELL_PROLOGUE + command + POWERSHELL_EPILOGUE
    policy = ["-ExecutionPolicy", "Bypass"] if windows else []
    return [shell, "-NoProfile", "-NonInteractive", *policy, "-EncodedCommand",
            base64.b64encode(script.encode("utf-16-le")).decode("ascii")], False


# The longest command line each platform starts: Linux's limit on one argument
# (MAX_ARG_STRLEN, which `sh -c COMMAND` meets first; macOS allows more), and
# Windows' on a whole command line, cmd.exe's own being shorter.
POSIX_ARGUMENT_MAX = 131071
WINDOWS_LINE_MAX = 32767
CMD_LINE_MAX = 8191


def command_too_long(command: str, shell: str, platform: str = sys.platform) -> str | None:
    """Why this platform could never start the command in this shell (None: it can),
    so that such a job is refused at enqueue instead of failing every attempt."""
    args, _ = shell_invocation(command, shell, platform, comspec="cmd.exe")
    if platform == "win32":
        if isinstance(args, str):  # auto: subprocess puts cmd.exe /c "..." around it
            size = len(args) + (len('cmd.exe /c ""') if shell == "auto" else 0)
        else:
            size = sum(len(arg) + 3 for arg in args)  # with quotes and a space each, at most
        limit, unit = (CMD_LINE_MAX if shell in ("auto", "cmd") else WINDOWS_LINE_MAX), "characters"
        if size <= limit:
            return None
    else:
        size = max(len(arg.encode("utf-8")) for arg in ([args] if isinstance(args, str) else args))
        limit, unit = POSIX_ARGUMENT_MAX, "bytes"
        if size <= limit:
            return None
    encoded = " once encoded for PowerShell" if shell in ("powershell", "pwsh") else ""
    return (f"the command line would be {size:,} {unit}{encoded}, and this system starts at most "
            f"{limit:,}; put the command in a script file and enqueue a command that runs it.")


def tree_kill_command(pid: int, platform: str = sys.platform) -> list[str] | None:
    """The command that kills a whole process tree on Windows (None: use killpg)."""
    if platform == "win32":
        return ["taskkill", "/T", "/F", "/PID", str(pid)]
    return None


def kill_tree(proc: subprocess.Popen, mark: str, platform: str = sys.platform) -> None:
    """Kill a command's process group, and the processes that left it (setsid)
    but still carry its attempt's mark in their environment (Linux only)."""
    kill_process_group(proc.pid, platform)
    if platform.startswith("linux"):
        kill_marked(mark)
    try:
        proc.kill()
    except OSError:
        pass


def attempt_mark(job_id: str, attempt: int, identity: WorkerIdentity) -> str:
    """The QUEUECTL_ATTEMPT value in the environment of one attempt's command."""
    return f"{job_id}#{attempt}@{identity.host}:{identity.pid}"


def stop_orphaned_command(command_pid: int | None, mark: str) -> None:
    """Kill what is left of a dead worker's attempt on this host. The command outlives its worker
    (it has its own session) and must stop before the job runs again, so that it never runs twice
    at once. Its children that left the group, and the command itself when the worker died before
    it wrote the pid down, carry the attempt's mark (found on Linux)."""
    if command_pid:
        kill_process_group(command_pid)
    kill_marked(mark)


def kill_process_group(pid: int, platform: str = sys.platform) -> None:
    """Kill a command's whole process tree, given the pid it was started with."""
    import signal
    import subprocess

    command = tree_kill_command(pid, platform)
    try:
        if command:
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        else:
            os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


# Finding the processes of an attempt by the QUEUECTL_ATTEMPT mark in their environment (Linux:
# /proc; elsewhere nothing is found). Written as program text because a worker's guardian runs it
# in a bare interpreter (python -S), which costs milliseconds where importing this file would not.
MARKS_PROGRAM = """
def kill_marked(mark, proc_root="/proc"):
    \"\"\"Kill the process groups whose QUEUECTL_ATTEMPT is `mark` (one attempt), or, for a mark
    "@host:pid", any attempt of that worker.\"\"\"
    import os, signal

    wanted = (mark if mark.startswith("@") else "=" + mark).encode()
    try:
        pids = [name for name in os.listdir(proc_root) if name.isdigit()]
    except OSError:
        return
    for pid in pids:
        try:
            with open(os.path.join(proc_root, pid, "environ"), "rb") as handle:
                marks = [v for v in handle.read().split(b"\\0") if v.startswith(b"QUEUECTL_ATTEMPT=")]
            if marks and marks[0].endswith(wanted):
                os.killpg(os.getpgid(int(pid)), signal.SIGKILL)
        except (OSError, ValueError):
            continue
"""


def _defined(source: str, name: str) -> Any:
    """The function `name` that program text defines."""
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    return namespace[name]


kill_marked: Callable[..., None] = _defined(MARKS_PROGRAM, "kill_marked")

# The guardian's whole program: it waits for its worker's last word on stdin; if the pipe ends
# without "done" (the worker was killed), it kills every command of that worker (argv[1]: host:pid).
GUARDIAN_PROGRAM = MARKS_PROGRAM + """
import signal, sys

for name in ("SIGINT", "SIGTERM", "SIGHUP"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)
if sys.stdin.read() != "done":
    kill_marked("@" + sys.argv[1])
"""


class Guardian:
    """A small process of its own that outlives its worker to stop what the worker was running.
    Commands run in sessions of their own (so a terminal's Ctrl+C does not reach them), so they
    outlive a worker that is killed (kill -9, the OOM killer); recovery kills them only from the
    same host, and another host would run the job again while it still runs. The guardian holds a
    pipe from its worker: when it ends without the worker's "done", it kills the commands that
    carry the worker's attempt marks, at once. It costs the worker nothing per job. (Linux: it
    finds them in /proc; elsewhere a worker killed hard leaves its commands running.)"""

    def __init__(self, identity: WorkerIdentity, platform: str = sys.platform) -> None:
        self.proc: subprocess.Popen | None = None
        self.worker = f"{identity.host}:{identity.pid}"
        self.platform = platform

    def start(self) -> None:
        import subprocess

        if self.proc is not None or not self.platform.startswith("linux"):
            return
        try:
            self.proc = subprocess.Popen([sys.executable, "-S", "-c", GUARDIAN_PROGRAM, self.worker],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        except OSError:
            self.proc = None  # none to be had: commands outlive a killed worker, as they did

    def close(self, running: bool) -> None:
        """The worker stops. With no command of its own running, it says so: what it leaves behind
        (processes its commands started on purpose, late output) is left alone; a command still
        running is killed as if the worker had died."""
        import subprocess

        if self.proc is None or self.proc.stdin is None:
            return
        try:
            if not running:
                self.proc.stdin.write(b"done")
            self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass


def children_left(pid: int, platform: str = sys.platform) -> bool:
    """Are processes of the job's group still running after its shell exited?
    (Windows cannot tell cheaply; there the next job reuses the scratch file.)"""
    if platform == "win32":
        return False
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    except OSError:
        return True
    return True


# --------------------------------------------------------------------------
# 4. The rules: what becomes of a job, the same for every store
# --------------------------------------------------------------------------


def _chance() -> float:
    """A uniform number in [0, 1) (failure_rate's dice; no import of random)."""
    return int.from_bytes(os.urandom(7), "big") / 2**56


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next attempt: base ** attempts, capped."""
    try:
        return min(float(base) ** attempts, float(cap))
    except OverflowError:
        return float(cap)


class Outcome:
    """What became of one claimed job in a worker process.

    kind is "ran" (the command ran: exit_code/error say how it went),
    "interrupted" (killed by a second Ctrl+C: not counted as an attempt),
    "released" (claimed ahead but never started, handed back at a stop) or
    "cancelled" (`queuectl cancel` asked: killed, or never started).
    """

    __slots__ = ("job_id", "attempt", "kind", "exit_code", "error", "output_tail", "worker", "started", "duration",
                 "warning")

    def __init__(self, job_id: str, attempt: int, kind: str = "ran", exit_code: int | None = None,
                 error: str | None = None, output_tail: str = "", worker: str | None = None,
                 started: float | None = None, duration: float | None = None) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.kind = kind
        self.exit_code = exit_code
        self.error = error
        self.output_tail = output_tail
        self.worker = worker
        self.started = started
        self.duration = duration
        self.warning: str | None = None  # e.g. its output could not be kept; never changes the result


# -- the rules: what becomes of a job, the same for every store (DESIGN.md's state table) ------
# Each takes a job (a dict as stored) and returns the job it becomes; a store only keeps state.


def worker_alive(host: str | None, pid: Any, heartbeat: float | None, claimed_at: float,
                 lease: float, now: float, local_host: str = HOST) -> bool:
    """May the worker that claimed a job still be running it?

    On this host a vanished pid is dead at once; anywhere, a heartbeat older
    than the lease is dead (that also covers a reused pid). A worker that has
    not written its first heartbeat yet gets the lease from its claim.
    """
    if heartbeat is None:
        heartbeat = claimed_at
    fresh = now - heartbeat <= lease
    if host == local_host:
        return isinstance(pid, int) and not isinstance(pid, bool) and pid_alive(pid) and fresh
    return fresh


class WorkerIdentity:
    """Who claims: a worker process (pid, host); by default this one."""

    def __init__(self, host: str | None = None, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.host = HOST if host is None else host


def newer_copy(copy: dict[str, Any], other: dict[str, Any] | None) -> bool:
    """Is `copy` a later state of its job than `other`? A crash between two writes can leave a
    job in two places (a store writes the destination first): the later updated_at wins, and on
    a tie (the same millisecond) a finished copy wins over an active one, since finishing wrote
    it first. Between two copies of the same kind, neither is newer."""
    if other is None:
        return True
    mine, theirs = _epoch(copy.get("updated_at")), _epoch(other.get("updated_at"))
    return mine > theirs or (mine == theirs and copy.get("state") in FINISHED_STATES
                             and other.get("state") not in FINISHED_STATES)


def newest_copy(copies: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest state among copies of one job (newer_copy; the first of equals)."""
    best = None
    for copy in copies:
        if best is None or newer_copy(copy, best):
            best = copy
    return best


def dead_workers(workers: list[dict[str, Any]], processing: list[dict[str, Any]], lease: float,
                 now: float) -> set[tuple[Any, Any]]:
    """The workers (host, pid) one recovery takes for dead, given the heartbeats (`alive` judged by
    worker_alive) and the jobs claimed: each judged once, so one that dies while the recovery runs
    has all its jobs settled in this round or none (looking again per job would take some and
    leave the others without the evidence that their attempts had started). A worker without a
    heartbeat is judged by its latest claim."""
    verdicts = {(w["host"], w["pid"]): w["alive"] for w in workers}
    claims: dict[tuple[Any, Any], float] = {}
    for job in processing:
        key = (job.get("host"), job.get("pid"))
        if key not in verdicts:
            claims[key] = max(claims.get(key, 0.0), _epoch(job.get("started_at")))
    for (host, pid), claimed_at in claims.items():
        verdicts[host, pid] = worker_alive(host, pid, None, claimed_at, lease, now)
    return {key for key, alive in verdicts.items() if not alive}


def holds_claim(job: dict[str, Any] | None, worker: WorkerIdentity, attempt: int | None = None) -> bool:
    """Is the job (this attempt of it) still the worker's claim? Recovery may have taken it from a
    worker that was suspended past its lease: then nothing that worker says about it counts."""
    return (job is not None and job["state"] == "processing" and job.get("pid") == worker.pid
            and job.get("host") == worker.host and (attempt is None or job["attempts"] == attempt))


def is_due(job: dict[str, Any], now: float) -> bool:
    """May a waiting job (pending or failed) be claimed now? Claims take the due jobs with the
    highest priority first, then the oldest (in the order they were enqueued or revived)."""
    return (job["state"] != "processing" and not job.get("waiting_for")
            and (not job.get("run_at") or _epoch(job["run_at"]) <= now))


def entering_jobs(jobs: list[dict[str, Any]], states_of: Callable[[list[str]], dict[str, str]],
                  now: float) -> list[dict[str, Any]]:
    """New jobs as they enter the queue, those that name others in `after` waiting for the ones
    that have not completed, or cancelled at once (they never run) if one of them is dead or
    cancelled (the new ones first, so a chain among them cancels down the chain). `states_of`:
    the store's states of jobs it holds. A job named nowhere, and new jobs that wait for each
    other, are refused with QueueError."""
    new = {job["id"]: job for job in jobs}
    named = {dep for job in jobs for dep in job.get("after", ())}
    if not named:
        return jobs
    states = states_of([dep for dep in named if dep not in new]) if named - set(new) else {}
    for job in jobs:
        for dep in job.get("after", ()):
            if dep not in new and dep not in states:
                raise QueueError(f"job {job['id']!r} waits for {dep!r}, which is not in the queue; "
                                 "nothing was enqueued.")
    done: dict[str, dict[str, Any]] = {}
    for job in jobs:  # each after the new jobs it waits for (a depth-first walk, without recursion)
        path = [job["id"]]
        while path:
            current = path[-1]
            if current in done:
                path.pop()
                continue
            ahead = [dep for dep in new[current].get("after", ()) if dep in new and dep not in done]
            if not ahead:
                states.update((dep, done[dep]["state"]) for dep in new[current].get("after", ()) if dep in new)
                done[current] = waiting_job(new[current], states, now)
                path.pop()
            elif ahead[0] in path:
                raise QueueError(f"jobs {sorted(path[path.index(ahead[0]):])} wait for each other; "
                                 "nothing was enqueued.")
            else:
                path.append(ahead[0])
    return [done[job["id"]] for job in jobs]


def waiting_job(job: dict[str, Any], states: dict[str, str], now: float) -> dict[str, Any]:
    """A job as it enters the queue (new or revived): waiting for those of its `after` jobs that
    have not completed (one that is gone counts as completed); cancelled at once if one of them
    is dead or cancelled."""
    job = {key: value for key, value in job.items() if key != "waiting_for"}
    for dep in job.get("after", ()):
        if states.get(dep) in ("dead", "cancelled"):
            return cancelled_job(job, now, f"cancelled: it waits for {dep}, which is {states[dep]}")
    waiting = [dep for dep in job.get("after", ()) if states.get(dep, "completed") != "completed"]
    return dict(job, waiting_for=waiting) if waiting else job


def dependency_ended(job: dict[str, Any], dep: str, state: str, now: float) -> dict[str, Any]:
    """A waiting job once a job it waits for has ended: that one is crossed off when it completed
    (the job is claimable when none is left); dead or cancelled, the job is cancelled too."""
    if state in ("dead", "cancelled"):
        return cancelled_job(job, now, f"cancelled: it waits for {dep}, which is {state}")
    waiting = [other for other in job.get("waiting_for", ()) if other != dep]
    job = {key: value for key, value in job.items() if key != "waiting_for"}
    job["updated_at"] = iso(now)
    return dict(job, waiting_for=waiting) if waiting else job


def released(job: dict[str, Any]) -> dict[str, Any]:
    """The job without its worker's claim."""
    return {key: value for key, value in job.items() if key not in ("pid", "host")}


def uncounted(job: dict[str, Any]) -> dict[str, Any]:
    """The job as if its current attempt had never started: a claim ahead of time, a run killed
    by a second Ctrl+C, a worker that gave it back unstarted."""
    job = {key: value for key, value in job.items() if key != "started_at"}
    job["attempts"] = max(0, job["attempts"] - 1)
    return job


def requeued(job: dict[str, Any], now: float, counted: bool) -> dict[str, Any]:
    """Back to pending, due now; an attempt that never really ran is not counted."""
    job = released(job if counted else uncounted(job))
    job.update(state="pending", updated_at=iso(now))
    return job


def cancelled_job(job: dict[str, Any], now: float, error: str | None) -> dict[str, Any]:
    """The job as recorded in cancelled.json: it is never run, or run again."""
    job = {key: value for key, value in job.items() if key not in ("pid", "host", "run_at", "waiting_for")}
    job.update(state="cancelled", error=error or "cancelled", finished_at=iso(now), updated_at=iso(now))
    return job


def cancel_decision(job: dict[str, Any] | None, finished: dict[str, Any] | None,
                    now: float) -> tuple[str, str, dict[str, Any] | None]:
    """What `cancel` does to a job, given its active copy and its finished copy (either may be
    None): (what happened, the state it was in, the job it becomes). "finished": nothing to
    cancel (a finished copy newer than an active one is the job: the active copy is a crash's
    leftover); "unknown"; "requested": it is running, so it is marked and its worker stops it;
    "cancelled": a pending or failed job, cancelled now."""
    if finished is not None and newer_copy(finished, job):
        return "finished", finished["state"], None
    if job is None:
        return "unknown", "", None
    if job["state"] == "processing":
        marked = job if "cancel_requested_at" in job else dict(job, cancel_requested_at=iso(now))
        return "requested", "processing", marked
    return "cancelled", job["state"], cancelled_job(job, now, f"cancelled while {job['state']}")


def out_of_attempts(job: dict[str, Any]) -> bool:
    """Has the job used up its attempts (a job allows at least one)?"""
    return job["attempts"] >= max(1, job.get("max_retries", 1))


def claimed_job(job: dict[str, Any], worker: WorkerIdentity, now: float) -> dict[str, Any]:
    """A due job as the worker that claims it holds it: processing, its new attempt counted."""
    job = {key: value for key, value in job.items() if key != "run_at"}
    stamp = iso(now)
    job.update(state="processing", attempts=job["attempts"] + 1, pid=worker.pid, host=worker.host,
               started_at=stamp, updated_at=stamp)
    return job


def revived(job: dict[str, Any], now: float) -> dict[str, Any]:
    """A finished job that `dlq retry` or `requeue` sends back: pending, with all its attempts
    again (its own fields kept; the last attempt's error and output too, until the next one)."""
    gone = ("finished_at", "started_at", "exit_code", "cancel_requested_at")
    job = {key: value for key, value in job.items() if key not in gone}
    job.update(state="pending", attempts=0, updated_at=iso(now))
    return job


def requeued_jobs(jobs: list[dict[str, Any]], states_of: Callable[[list[str]], dict[str, str]],
                  now: float) -> list[dict[str, Any]]:
    """Finished jobs that `requeue` sends back (revived), each waiting for those of its `after`
    jobs that have not completed, the ones requeued with it included. One that waits for a dead or
    cancelled job is refused (QueueError): that one must be requeued first, or with it."""
    back = {job["id"] for job in jobs}
    named = {dep for job in jobs for dep in job.get("after", ())} - back
    states = dict(states_of(sorted(named)) if named else {}, **{job_id: "pending" for job_id in back})
    result = []
    for job in jobs:
        again = waiting_job(revived(job, now), states, now)
        if again["state"] == "cancelled":
            dep = next(dep for dep in job["after"] if states.get(dep) in ("dead", "cancelled"))
            raise QueueError(f"job {job['id']!r} waits for {dep!r}, which is {states[dep]}: requeue that one "
                             "first, or with it; nothing was requeued.")
        result.append(again)
    return result


def requeue_refusal(job_id: str, job: dict[str, Any] | None) -> QueueError | None:
    """Why `requeue` cannot send this job back (None: it can)."""
    if job is None:
        return NoSuchJob(f"no job with id {job_id!r}; nothing was requeued.")
    if job["state"] not in FINISHED_STATES:
        return QueueError(f"job {job_id!r} is {job['state']}: only a completed, dead or cancelled job can be "
                          "requeued; nothing was requeued.")
    return None


def settle_outcome(job: dict[str, Any], outcome: Outcome, config: dict[str, Any], now: float,
                   chance: Callable[[], float]) -> tuple[dict[str, Any], str]:
    """What an attempt's outcome makes of its claimed job: (the job, what happened), what being
    "completed", "dead" or "cancelled" (finished), "failed" (its retry is scheduled), or the
    outcome's kind, "released" or "interrupted" (back to pending, the attempt not counted).
    A success stands even if a cancel came meanwhile: it finished first. `chance` is the dice
    for config's failure_rate."""
    cancel = outcome.kind == "cancelled" or "cancel_requested_at" in job
    if outcome.kind not in ("ran", "cancelled"):  # never started, or killed by a second Ctrl+C
        if cancel:
            return cancelled_job(uncounted(job), now, "cancelled before it started"), "cancelled"
        if outcome.kind == "interrupted":
            job = dict(job, error=outcome.error or "interrupted by Ctrl+C; not counted as an attempt")
        return requeued(job, now, counted=False), outcome.kind
    job = released(job)
    job.update(worker=outcome.worker, started_at=iso(outcome.started), exit_code=outcome.exit_code,
               error=outcome.error, output=outcome.output_tail, updated_at=iso(now))
    job.setdefault("first_started_at", job["started_at"])  # for `stats`: enqueue to first start
    job.pop("warning", None)  # a warning belongs to the attempt that had it
    if outcome.warning:
        job["warning"] = outcome.warning
    if outcome.duration is not None:
        job["duration"] = round(outcome.duration, 3)
    success = outcome.exit_code == 0 and outcome.error is None
    if success and config["failure_rate"] and chance() < config["failure_rate"]:
        success = False
        job["error"] = f"simulated failure (failure_rate={config['failure_rate']})"
    if success:
        job.update(state="completed", finished_at=iso(now))
        return job, "completed"
    if cancel:  # never retried
        return cancelled_job(job, now, f"cancelled; the attempt ended with {outcome.error}" if outcome.kind == "ran"
                             else "cancelled while running; its process tree was killed"), "cancelled"
    if out_of_attempts(job):
        job.update(state="dead", finished_at=iso(now))
        return job, "dead"
    delay = backoff_delay(job["attempts"], config["backoff_base"], config["max_backoff"])
    job.update(state="failed", run_at=iso(now + delay))
    return job, "failed"


def settle_orphan(job: dict[str, Any], started: bool, now: float) -> tuple[dict[str, Any], str]:
    """What becomes of a job whose worker died: (the job, "cancelled", "dead" or "pending"). A run
    that had started counts as an attempt (the crash may have been the job's doing); a job
    claimed ahead and never started does not."""
    if started:
        job = dict(job, error=f"the worker (pid {job.get('pid')} on {job.get('host')}) died during attempt "
                              f"{job['attempts']}", exit_code=None)
    if "cancel_requested_at" in job:
        return cancelled_job(job if started else uncounted(job), now, "cancelled; its worker had died"), "cancelled"
    if started and out_of_attempts(job):
        job = released(job)
        job.update(state="dead", finished_at=iso(now), updated_at=iso(now))
        return job, "dead"
    return requeued(job, now, counted=started), "pending"


# --------------------------------------------------------------------------
# 5. Attempt records: the header, output and footer of one attempt
# --------------------------------------------------------------------------


def first_data(handle: Any, start: int) -> int:
    """Where data starts again at or after `start`, past a hole punch_hole made (SEEK_DATA where the
    platform has it; a hole reads as zeros)."""
    try:
        return os.lseek(handle.fileno(), start, os.SEEK_DATA)
    except (AttributeError, OSError):  # no SEEK_DATA; or ENXIO: no data after start
        return start


PID_FIELD = 10  # room in the header for the command's pid, written once it is known


def attempt_header(job_id: str, attempt: int, started: float, worker: str, identity: WorkerIdentity) -> bytes:
    """The line before an attempt's output. Recovery looks for it in a dead
    worker's scratch file, and kills the command's process group it names."""
    return (f"=== {job_id} attempt {attempt} started {iso(started)} by {worker} "
            f"(pid {identity.pid} on {identity.host}), command pid {'?':<{PID_FIELD}}\n").encode()


# -- the log format -------------------------------------------------------------
# logs/<id>.log is a series of records, one per attempt, each appended whole after its attempt ended:
#   === <id> attempt <n> started <time> by <worker> (pid <p> on <host>), command pid <c>[ (not counted)]:
#       <size> bytes of output follow[ (<k> older bytes removed: log_max_bytes)]    (all one line)
#   exactly <size> bytes of output, and a newline if they do not end with one
#   === attempt <n> ended: <how it ended>
# A reader skips exactly <size> bytes, so nothing a command prints is ever taken for a header or
# a footer. A log may start with the note cap_log leaves when it dropped the oldest records.

LOG_LINE_MAX = 4096  # no header or footer line is longer (an id has at most 64 characters)
_RECORD_HEADER = re.compile(rb"=== (\S+) attempt (\d+) started (\S+) by (.*) \(pid (\d+) on (.*)\), "
                            rb"command pid (\S+)( \(not counted\))?: (\d+) bytes of output follow"
                            rb"(?: \((\d+) older bytes removed: log_max_bytes\))?\n\Z")
_RECORD_FOOTER = re.compile(rb"=== attempt (\d+) ended: ([^\n]*)\n\Z")
# An attempt's first line in its scratch file (attempt_header). The previous release's logs used it
# and its footer with no byte count: those are read line by line (best effort).
_SCRATCH_HEADER = re.compile(rb"=== (\S+) attempt (\d+) started (\S+) by (.*) \(pid (\d+) on (.*)\), "
                             rb"command pid \S*\s*\Z")
_OLD_FOOTER = re.compile(rb"=== attempt (\d+) ended: (.*?)\s*\Z")
_CAP_NOTE = b"=== older output removed: "


class LogRecord:
    """One attempt as a job's log holds it: who ran it, where its output is (bytes
    output_start to output_end of the file) and how it ended."""

    __slots__ = ("job_id", "number", "started", "worker", "counted", "removed", "start", "output_start",
                 "output_end", "end", "ending", "problem", "torn")

    def __init__(self, start: int, header: re.Match | None = None) -> None:
        text = [group.decode("utf-8", "replace") for group in header.groups()[:6]] if header else [""] * 6
        self.job_id = text[0] or None  # None: its header was cut off (a log of the previous release)
        self.number = int(text[1]) if header else None
        self.started = text[2]
        self.worker = f"{text[3]} (pid {text[4]} on {text[5]})" if header else ""
        self.counted = True
        self.removed = 0  # older output left out when it was written (log_max_bytes)
        self.start = self.output_start = self.output_end = self.end = start
        self.ending: str | None = None  # None: no footer
        self.problem: str | None = None  # what is wrong with it where the log is damaged
        self.torn = False  # the log ends inside it: a write was cut short

    def identity(self) -> tuple[Any, ...]:
        """What tells this attempt from every other one: id, number, start and worker."""
        return self.job_id, self.number, self.started, self.worker


def command_pid_of(header: bytes) -> int | None:
    """The command's pid an attempt's header names, once the worker wrote it in (write_pid)."""
    found = re.search(rb"command pid (\d+)", header)
    return int(found.group(1)) if found else None


def scratch_attempt(line: bytes) -> LogRecord | None:
    """The attempt a scratch file's first line starts (None: not an attempt header)."""
    header = _SCRATCH_HEADER.match(line)
    if header is None:
        return None
    record = LogRecord(0, header)
    record.output_start = record.output_end = record.end = len(line)
    return record


def log_records(handle: Any) -> Iterator[LogRecord]:
    """The records of a log file, in bounded memory: a record's output is skipped by its byte
    count, never scanned. Anything after a record that is not one is a damaged record, to the end."""
    size = os.fstat(handle.fileno()).st_size
    position = 0
    framed = False  # seen a record of the current format: from here on nothing is re-interpreted
    while position < size:
        handle.seek(position)
        line = handle.readline(LOG_LINE_MAX)
        if position == 0 and line.startswith(_CAP_NOTE):
            position = len(line)
            continue
        header = _RECORD_HEADER.match(line)
        if header is None and not framed:
            record = _old_record(handle, position, line)
        elif header is None:
            record = LogRecord(position)
            record.output_end = record.end = size
            record.problem = f"the log is damaged here: {size - position} bytes that are not an attempt's record"
            record.torn = position + len(line) == size and not line.endswith(b"\n")  # a header cut short
        else:
            framed = True
            record = _framed_record(handle, position, header, len(line), size)
        yield record
        position = record.end


def _framed_record(handle: Any, position: int, header: re.Match, header_size: int, size: int) -> LogRecord:
    record = LogRecord(position, header)
    record.counted = not header.group(8)
    record.removed = int(header.group(10) or 0)
    record.output_start = position + header_size
    record.output_end = record.output_start + int(header.group(9))
    footer_at = record.output_end
    torn = record.output_end > size  # the log ends inside its output: a write was cut short
    if not torn and record.output_end > record.output_start:
        handle.seek(record.output_end - 1)
        if handle.read(1) != b"\n":
            pad = handle.read(1)  # the newline queuectl adds after output that does not end with one
            torn = not pad
            footer_at += 1 if pad == b"\n" else size + 1
    if not torn and footer_at <= size:
        handle.seek(footer_at)
        footer = handle.readline(LOG_LINE_MAX)
        match = _RECORD_FOOTER.match(footer)
        if match and int(match.group(1)) == record.number:
            record.ending = match.group(2).decode("utf-8", "replace")
            record.end = footer_at + len(footer)
            return record
        torn = footer_at + len(footer) == size and not footer.endswith(b"\n")
    record.torn = torn
    record.problem = ("its record is cut short: the log ends inside it" if record.torn
                      else "the log is damaged here: this record's footer is missing")
    record.output_end = record.end = size
    return record


def _old_record(handle: Any, position: int, line: bytes) -> LogRecord:
    """One record of the previous release's format, read line by line from `line` (read at
    `position`) to its footer, or to a header of the current format."""
    header = _SCRATCH_HEADER.match(line)
    record = LogRecord(position, header)
    record.output_start = record.output_end = record.end = position + len(line) if header else position
    handle.seek(record.end)
    while True:
        line = handle.readline(1 << 20)
        if not line or _RECORD_HEADER.match(line):
            return record
        record.end += len(line)
        footer = _OLD_FOOTER.match(line)
        if footer and record.number in (None, int(footer.group(1))):
            record.number = int(footer.group(1))
            record.ending = footer.group(2).decode("utf-8", "replace")
            return record
        record.output_end = record.end


def open_late_output(path: str, offset: int) -> tuple[Any, int, int] | None:
    """An attempt's late output as Attempt.late holds it: the file that processes the attempt left
    running write into, from `offset` (where the attempt's own output ended) to its end now."""
    try:
        handle = open(path, "rb")
    except OSError:
        return None
    size = os.fstat(handle.fileno()).st_size
    return handle, min(offset, size), size


class Attempt:
    """One attempt's output as a store hands it out: its record (who ran it, how it ended) and
    its bytes, source[record.output_start:record.output_end], in a seekable binary file; `late`:
    (file, start, end) of what processes it left running wrote after it ended; `more(offset)`,
    for a running attempt: its output from `offset` on as far as it has got (None once the
    attempt is no longer running)."""

    def __init__(self, record: LogRecord, source: Any, late: tuple[Any, int, int] | None = None,
                 more: Callable[[int], bytes | None] | None = None) -> None:
        self.record = record
        self.source = source
        self.number = record.number
        self.late = late
        self.more = more


# --------------------------------------------------------------------------
# 6. The store interface: the queue in queue verbs
# --------------------------------------------------------------------------


def redact(location: str) -> str:
    """A location fit to print: the password of a URL replaced by ***, whether it is given before
    the host (user:password@) or as a parameter (?password=..., as libpq also takes it)."""
    location = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", location)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", location, flags=re.IGNORECASE)


class BaseStore:
    """Where a queue lives, in queue verbs: the contract that the command line, the worker and the
    dashboard rely on. Every verb is atomic across processes (and, for a database, hosts): it sees
    and leaves the queue whole. A store keeps the states, the history and each attempt's output;
    the rules of what happens to a job are the same for every store (DESIGN.md's state table).
    FolderStore (the folder of JSON files) is the first; a new store implements every verb below
    and is named in STORES."""

    location: str  # where the queue lives, fit to print: a folder's absolute path, or a URL without its password
    location_for_jobs: str  # what a job's QUEUECTL_HOME says, so that it can reach this queue (a password too)
    notes: list[str]  # notes for stderr that a verb left (a repaired file), printed at exit

    def prepare(self) -> None:
        """Before the command's first verb: whatever can be done without holding anyone up."""

    def close(self) -> None:
        """After the command's last verb (connections, temporary files)."""

    def clock(self) -> float:
        """The time every comparison of this queue is made in (a database's server time: hosts with
        skewed clocks agree), as epoch seconds."""
        raise NotImplementedError

    def schema_versions(self) -> tuple[int | None, int] | None:
        """(installed, known) version of a database's schema (installed None: none yet); None for a
        store that has no schema."""
        raise NotImplementedError

    def migrate(self, dry_run: bool = False) -> list[str]:
        """Bring the schema up to the known version: the statements applied (or, dry, to apply)."""
        raise NotImplementedError

    # -- the queue
    def enqueue(self, jobs: list[dict[str, Any]]) -> None:
        """Add jobs, all or nothing; an id that exists anywhere raises JobExists."""
        raise NotImplementedError

    def restore(self, jobs: list[dict[str, Any]]) -> None:
        """Add jobs as they are, in any state but processing (import): all or nothing; an id that
        exists is refused (JobExists)."""
        raise NotImplementedError

    def get(self, job_id: str) -> dict[str, Any] | None:
        """One job in its current state, or None."""
        raise NotImplementedError

    def jobs(self, state: str | None = None, limit: int | None = None,
             where: Callable[[dict[str, Any]], bool] | None = None, newest_first: bool = False,
             hint: bytes | None = None) -> list[dict[str, Any]]:
        """Jobs in one state or all (active first, then finished ones in the order they finished),
        those `where` accepts, up to `limit`; `hint` (text_hint) may let a store skip rows."""
        raise NotImplementedError

    def newest(self, state: str, limit: int) -> list[dict[str, Any]]:
        """The last `limit` jobs to reach a finished state, newest first."""
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        """Jobs per state, "scheduled": pending jobs whose run_at is still to come, and "waiting":
        pending jobs that wait for others (`after`)."""
        raise NotImplementedError

    def finished_count(self, state: str) -> int:
        """How many jobs are in one finished state."""
        raise NotImplementedError

    def states_of(self, ids: Iterable[str]) -> dict[str, str]:
        """The current state of each of these jobs (an unknown id is left out)."""
        raise NotImplementedError

    def active_jobs(self) -> list[dict[str, Any]]:
        """Every pending, processing and failed job."""
        raise NotImplementedError

    def finished_since(self, since: float | None = None) -> Iterator[dict[str, Any]]:
        """Finished jobs (those that finished at `since` or later), one at a time."""
        raise NotImplementedError

    def cancel(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        """Cancel jobs: {id: (what happened, the state it was in)}, what happened being "cancelled",
        "requested" (it is running: its worker is asked to stop it), "finished" or "unknown"."""
        raise NotImplementedError

    def ended_since_cancel(self, ids: Iterable[str]) -> dict[str, str]:
        """The state jobs whose stop the last cancel requested ended in, for those purged since
        (a store that keeps them until asked has none to add)."""
        raise NotImplementedError

    def dlq_retry(self, ids: list[str] | None) -> list[str]:
        """Dead jobs (all when None) back to pending with attempts 0; the ids moved."""
        raise NotImplementedError

    def requeue(self, ids: list[str]) -> list[str]:
        """Send finished jobs (completed, dead, cancelled) back to pending with attempts 0, at the
        back of the queue, their output kept: all or nothing (requeue_refusal)."""
        raise NotImplementedError

    def purge(self, states: Iterable[str], before: float | None, apply: bool) -> dict[str, int]:
        """Finished jobs in these states that finished before `before`, counted per state; deleted
        (with their output) when `apply`."""
        raise NotImplementedError

    def recover_orphans(self) -> list[dict[str, Any]]:
        """Settle the jobs of workers that died; the jobs recovered."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The settings (DEFAULT_CONFIG, with what `config set` changed)."""
        raise NotImplementedError

    def set_config(self, key: str, value: Any) -> None:
        """Change one setting (already validated)."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise StoreError now if the stored state is damaged, before a worker starts on it."""
        raise NotImplementedError

    # -- workers
    def worker_round(self, outcomes: list[Outcome], want: int, worker: WorkerIdentity, recover: bool = False,
                     running: Iterable[tuple[str, int]] = ()
                     ) -> tuple[list[tuple[dict[str, Any], str]], list[dict[str, Any]], list[str]]:
        """A worker's one transaction: record its outcomes, recover dead workers' jobs (when
        `recover`), claim up to `want` due jobs; ([(job, what happened)], claimed, ids to stop):
        to stop are the worker's jobs `queuectl cancel` asked for, and those of the attempts it
        says are `running` ((id, attempt)) that are no longer its claim (it was taken for dead)."""
        raise NotImplementedError

    def attempt_started(self, job: dict[str, Any], worker: WorkerIdentity, header: bytes) -> bool:
        """The claimed job's attempt is about to run its command (`header`: its scratch file's first
        line): from now on a crash counts it. False if the attempt is no longer the worker's."""
        raise NotImplementedError

    def next_due(self) -> float | None:
        """When the next claimable job is due (0: now), on this host's clock; a cheap hint."""
        raise NotImplementedError

    def on_change(self, wake: Callable[[], None]) -> None:
        """Call `wake` (from any thread) when the queue may have changed (a job was enqueued, a
        cancel or a stop asked for), where the store can tell at once; a hint: workers poll anyway."""
        raise NotImplementedError

    def changed(self) -> bool:
        """Has the queue changed since this process last looked (a hint that takes no lock)?"""
        raise NotImplementedError

    def has_retries_waiting(self) -> bool:
        """Does a failed job wait for its retry?"""
        raise NotImplementedError

    def heartbeat(self, info: dict[str, Any]) -> None:
        """Say this worker process is alive (info: host, pid, threads, started_at, heartbeat_at)."""
        raise NotImplementedError

    def workers(self) -> list[dict[str, Any]]:
        """Worker processes with their last heartbeat and whether they look alive."""
        raise NotImplementedError

    def forget_worker(self, host: str, pid: int) -> None:
        """Forget a worker process that has stopped."""
        raise NotImplementedError

    def request_stop(self) -> None:
        """Ask every running worker to stop after its running jobs."""
        raise NotImplementedError

    def stop_requested_at(self) -> float | None:
        """When a stop was last asked for, or None."""
        raise NotImplementedError

    def clear_stop(self) -> None:
        """The last worker has stopped: forget the request."""
        raise NotImplementedError

    def pause(self) -> float | None:
        """From now on no worker round of any process or host claims a job, until resume (running
        jobs go on). When an earlier pause began, or None if the queue was not paused."""
        raise NotImplementedError

    def resume(self) -> bool:
        """Worker rounds claim again; False if the queue was not paused."""
        raise NotImplementedError

    def paused_since(self) -> float | None:
        """When the pause began (this host's clock), or None: the queue is not paused."""
        raise NotImplementedError

    def begin_worker(self, worker: WorkerIdentity) -> None:
        """A worker process starts here: make what it needs, or raise QueueError saying what is missing."""
        raise NotImplementedError

    def lost(self) -> str | None:
        """Why this worker process can record nothing more here (the place the queue lived at,
        as begin_worker found it, is gone), or None."""
        raise NotImplementedError

    # -- output: a store keeps each attempt's output; while an attempt runs, its command writes
    # into a scratch file of its worker's, which the store hands out (and can read while it grows)
    def new_scratch(self, worker: WorkerIdentity, name: str) -> Any:
        """A new, empty scratch file for one of this worker's threads (binary, read-write; its
        `name` is its path). OSError when it cannot be made."""
        raise NotImplementedError

    def scratch_in_place(self, handle: Any) -> bool:
        """Is this scratch file (open or closed) still where the store looks for it (nobody removed it)?"""
        raise NotImplementedError

    def remove_scratch(self, handle: Any) -> None:
        """A scratch file is no longer needed (closed or not)."""
        raise NotImplementedError

    def keep_output(self, job_id: str, attempt: int, worker: WorkerIdentity, header: bytes, source: Any,
                    start: int, end: int, ending: str, counted: bool = True) -> bool:
        """Keep an attempt's output, source[start:end] (`header`: its scratch file's first line),
        while the attempt is still this worker's claim; False if not."""
        raise NotImplementedError

    def keep_late_output(self, job_id: str, attempt: int, scratch: Any, end: int) -> None:
        """Processes the attempt's command left running still write into its scratch file: keep
        what they write after `end` as the attempt's late output (the file is the store's now)."""
        raise NotImplementedError

    def cap_late_output(self, limit: int) -> None:
        """Keep late output within `limit` bytes a file where the store can (called every heartbeat)."""
        raise NotImplementedError

    def log_location(self, job_id: str) -> str:
        """Where a job's output is kept, as `show` names it."""
        raise NotImplementedError

    def attempt_logs(self, job_id: str) -> list[Attempt]:
        """A job's recorded attempts, oldest first, with their output and late output."""
        raise NotImplementedError

    def running_attempt(self, job: dict[str, Any]) -> Attempt | None:
        """The job's running attempt with its output so far (its `more` reads on), or None."""
        raise NotImplementedError


# --------------------------------------------------------------------------
# 7. The folder store: atomic writes, the lock, the state files, the history, the logs
# --------------------------------------------------------------------------


def _fsync_dir(path: str, platform: str = sys.platform) -> None:
    """Make a rename durable (POSIX only: Windows cannot open a directory)."""
    if platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_folders(path: str) -> None:
    """os.makedirs, owner-only at every folder it creates (makedirs' mode reaches only the last one)."""
    parent = os.path.dirname(path)
    if parent and parent != path and not os.path.isdir(parent):
        make_private_folders(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def replace_with_retry(src: str, dst: str, platform: str = sys.platform,
                       replace: Callable[[str, str], None] = os.replace,
                       deadline_s: float = 2.0) -> None:
    """os.replace; on Windows retry sharing violations (an editor, antivirus)."""
    if platform != "win32":
        replace(src, dst)
        return
    give_up = time.monotonic() + deadline_s
    delay = 0.01
    while True:
        try:
            replace(src, dst)
            return
        except PermissionError:
            if time.monotonic() >= give_up:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def new_private_file(path: str) -> Any:
    """A new (or emptied) file only its owner can read, open for writing bytes."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600), "wb")


def atomic_write(path: str, data: bytes | list[bytes], durable: bool = True, sync: bool = True) -> None:
    """Write a temp file in the same folder, fsync, replace: never a torn file.
    (data may be a list of pieces, written one after another without joining them.)
    A cache that is checked when it is read (a JSON file) needs no fsync (sync=False)."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with new_private_file(tmp) as handle:
            handle.writelines([data] if isinstance(data, bytes) else data)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        replace_with_retry(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        _fsync_dir(os.path.dirname(path) or ".")


def dump_line(job: dict[str, Any]) -> str:
    """One job per line, id first, so an id can be found without parsing."""
    return json.dumps(job, ensure_ascii=False, separators=(",", ":"))


def render_array(lines: Iterable[bytes]) -> bytes:
    """A JSON array with one job (an encoded dump_line) per line."""
    body = b",\n".join(lines)
    return b"[\n" + body + b"\n]\n" if body else b"[\n]\n"


def jobs_a_line(text: str) -> int | None:
    """How many jobs a file holds if it is in queuectl's layout ("[", one job a line,
    each starting with its id, "]"), else None. (The history index checks the same
    shape a megabyte at a time: _scan_into.)"""
    if text == "[\n]\n":
        return 0
    if not (text.startswith('[\n{"id":"') and text.endswith("}\n]\n")):
        return None
    lines = text.count("\n") - 2
    if text.count('\n{"id":"') != lines or text.count("},\n") != lines - 1:
        return None
    return lines


def parse_array_file(path: str, data: bytes) -> tuple[list[dict[str, Any]], list[bytes], bool]:
    """Parse a one-job-per-line JSON array: (jobs, lines, repaired).

    A tail torn by a crash during an append (no closing bracket, a partial
    last line) is dropped and reported; any other damage is a CorruptFileError.
    A file a person reformatted (valid JSON, other layout) is accepted.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptFileError(path, "not UTF-8 text") from None
    count = jobs_a_line(text)
    if count:  # queuectl's own layout: one C-speed parse of the whole array, and the lines beside it
        try:
            whole = json.loads(text)
        except (ValueError, RecursionError):
            whole = None
        lines = data[2:-3].split(b",\n")
        # Line i must be job i: as many lines as jobs.
        if isinstance(whole, list) and len(whole) == len(lines) == count and all(type(job) is dict for job in whole):
            return whole, lines, False
    raw_lines = text.split("\n")
    while raw_lines and not raw_lines[-1].strip():
        raw_lines.pop()
    if not raw_lines:
        return [], [], True  # created by an append that a crash cut short before its first write
    jobs: list[dict[str, Any]] = []
    lines: list[bytes] = []
    closed = raw_lines[-1].strip() == "]"
    if raw_lines[0].strip() == "[":
        body = raw_lines[1:-1] if closed else raw_lines[1:]
        ok = True
        for index, line in enumerate(body):
            line = line.strip()
            if line.endswith(","):
                line = line[:-1]
            try:
                job = json.loads(line)
            except (ValueError, RecursionError):
                job = None
            if job is None and not closed and index == len(body) - 1 and "}" in line:
                try:  # an append torn after its first bytes ("...},]"): the job before it is whole
                    line = line[: line.rindex("}") + 1]
                    job = json.loads(line)
                except (ValueError, RecursionError):
                    job = None
            if not isinstance(job, dict):
                if not closed and index == len(body) - 1:
                    return jobs, lines, True  # the torn tail of an append
                ok = False
                break
            jobs.append(job)
            lines.append(line.encode("utf-8"))
        if ok and closed:
            return jobs, lines, False
        if ok:
            return jobs, lines, True
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise CorruptFileError(path, f"{error}") from None
    if not isinstance(value, list) or not all(isinstance(j, dict) for j in value):
        raise CorruptFileError(path, "expected a JSON array of job objects")
    return value, [dump_line(j).encode("utf-8") for j in value], True


def repair_reason(data: bytes) -> str:
    """Why parse_array_file had to repair a file: edited (it is whole JSON) or torn."""
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return "a write had been cut short"
    return "it was edited into another layout"


def _valid_fast(job: dict[str, Any], allowed: tuple[str, ...]) -> bool:
    timeout = job.get("timeout")
    return (type(job.get("id")) is str and type(job.get("command")) is str and job.get("state") in allowed
            and type(job.get("attempts")) is int and type(job.get("priority", 0)) is int
            and type(job.get("max_retries", 0)) is int
            and type(job.get("run_at") or "") is str and type(job.get("started_at") or "") is str
            and (timeout is None or (type(timeout) in (int, float) and timeout >= 0)))


def check_record(path: str, job: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """A job read from a file must be one queuectl can act on."""
    if _valid_fast(job, allowed):
        return
    if not isinstance(job.get("id"), str) or not isinstance(job.get("command"), str):
        raise CorruptFileError(path, f"a job without a string id and command: {dump_line(job)[:120]}")
    if job.get("state") not in allowed:
        raise CorruptFileError(path, f"job {job['id']!r} has state {job.get('state')!r}, "
                                     f"expected one of {', '.join(allowed)}")
    if type(job.get("attempts")) is not int:
        raise CorruptFileError(path, f"job {job['id']!r} has no whole-number attempts field")
    for field in ("priority", "max_retries"):
        if type(job.get(field, 0)) is not int:
            raise CorruptFileError(path, f"job {job['id']!r} has a {field} that is not a whole number")
    for field in ("run_at", "started_at"):
        if type(job.get(field) or "") is not str:
            raise CorruptFileError(path, f"job {job['id']!r} has a {field} that is not an ISO-8601 string")
    raise CorruptFileError(path, f"job {job['id']!r} has a timeout that is not a number of seconds")


class HistoryIndex:
    """What is known of a history file without reading it again: up to `size`
    bytes of the file with inode `inode`, it holds `jobs` jobs whose ids are in
    a Bloom filter. A cache: deleting history.idx costs one full read."""

    HASHES = 7
    BITS_PER_JOB = 10

    def __init__(self, inode: int = 0, size: int = 0, jobs: int = 0, bits: bytearray | None = None,
                 check: int = 0, mtime: int = 0) -> None:
        self.inode, self.size, self.jobs, self.check, self.mtime = inode, size, jobs, check, mtime
        self.bits = bits if bits is not None else bytearray(1 << 13)

    @staticmethod
    def digest(job_id: bytes) -> bytes:
        # A real hash: ids like job-000123 are alike, and a checksum such as crc32
        # maps alike ids to alike bits (measured: 8% false positives, not 0.001%).
        return _blake2b(job_id, digest_size=16).digest()

    def _positions(self, job_id: bytes, digest: bytes | None = None) -> Iterator[int]:
        digest = digest or self.digest(job_id)
        size = len(self.bits) * 8
        first, step = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little") | 1
        return ((first + i * step) % size for i in range(self.HASHES))

    def add(self, job_id: bytes, digest: bytes | None = None) -> None:
        for bit in self._positions(job_id, digest):
            self.bits[bit >> 3] |= 1 << (bit & 7)

    def might_hold(self, job_id: str, digest: bytes | None = None) -> bool:
        """Is this id perhaps in the file (digest: its digest(), when several filters are asked)?"""
        return all(self.bits[bit >> 3] & (1 << (bit & 7)) for bit in self._positions(job_id.encode(), digest))

    def full(self) -> bool:
        return self.jobs * self.BITS_PER_JOB > len(self.bits) * 8

    def fits(self, path: str, st: os.stat_result) -> bool:
        """Is this still a prefix of the file: same inode, not shorter, the same
        bytes before `size`, and (if no longer) not modified since?"""
        return (self.inode == st.st_ino and self.size <= st.st_size
                and (self.size < st.st_size or self.mtime == st.st_mtime_ns)
                and self.check == _tail_check(path, self.size))


try:
    from _blake2 import blake2b as _blake2b  # what hashlib.blake2b is, without hashlib's import time
except ImportError:  # pragma: no cover - other Pythons
    from hashlib import blake2b as _blake2b


def _tail_check(path: str, size: int) -> int:
    """A checksum of the 64 bytes before the closing "\\n]\\n" of a file that was
    `size` bytes long (an append replaces just those three bytes)."""
    import zlib

    end = max(0, size - 3)
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, end - 64))
            return zlib.crc32(handle.read(end - max(0, end - 64)))
    except OSError:
        return -1


def _regions(handle: Any, offset: int, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """A file from `offset` (to `end`), about a megabyte at a time, as (where the piece
    starts, piece), in pieces that end at a newline; each piece after the first starts again
    with the newline that ended the one before, so a "\\n{" is always seen whole, and only once."""
    handle.seek(offset)
    leftover = prefix = b""
    start = offset  # where leftover starts in the file
    while True:
        want = 1 << 20 if end is None else min(1 << 20, end - handle.tell())
        chunk = handle.read(want) if want > 0 else b""
        if not chunk:
            if leftover:
                yield start - len(prefix), prefix + leftover
            return
        block = leftover + chunk
        cut = block.rfind(b"\n") + 1
        if cut:
            yield start - len(prefix), prefix + block[:cut]
            prefix = b"\n"
            start += cut
        leftover = block[cut:]


def _scan_into(path: str, index: HistoryIndex | None, room: int = 0) -> tuple[HistoryIndex, bytes] | None:
    """Index the jobs appended to a history file since `index` (all of it when None, with a
    filter sized for `room` jobs, or for what the file's size suggests): the index, and the
    position records of the jobs it added (see Positions). None when the file is not in
    queuectl's layout."""
    with open(path, "rb") as handle:
        st = os.fstat(handle.fileno())
        if index is None or index.size < 4:
            room = room or st.st_size // 256
            bits = 1 << max(16, (room * HistoryIndex.BITS_PER_JOB).bit_length())
            offset, previous = 0, HistoryIndex(st.st_ino, bits=bytearray(bits // 8))
        else:
            offset, previous = index.size - 3, index  # where its closing "\n]\n" was
        result = HistoryIndex(st.st_ino, st.st_size, previous.jobs, bytearray(previous.bits), 0, st.st_mtime_ns)
        records = bytearray()
        starts = ends = 0
        head = tail = b""
        for at, region in _regions(handle, offset, st.st_size):  # (an append meanwhile shows in the tail)
            if not head:
                head = region[:3]
            tail = (tail + region)[-4:]
            starts += region.count(b"\n{")
            ends += region.count(b"},\n")
            for match in _HISTORY_LINE.finditer(region):
                digest = HistoryIndex.digest(match.group(1))
                result.add(match.group(1), digest)
                records += position_key(digest) + (at + match.start() + 1).to_bytes(8, "little")
    if offset == 0:
        empty = head == b"[\n]" and tail == b"[\n]\n"
        shaped = empty or (head == b"[\n{" and tail == b"}\n]\n" and ends == starts - 1)
    else:
        shaped = head == b",\n{" and tail == b"}\n]\n" and ends == starts - 1
    if not shaped or len(records) != starts * POSITION_SIZE:
        return None
    result.jobs += starts
    if result.full():  # keep false positives rare: start over with room for four times as many
        return _scan_into(path, None, room=result.jobs * 4)
    result.check = _tail_check(path, st.st_size)
    return result, bytes(records)


_HISTORY_LINE = re.compile(rb'\n\{"id":"([^"\\]*)"')


def load_history_indexes(path: str) -> dict[str, HistoryIndex]:
    """history.idx: one JSON line {file name: {inode, size, jobs, check, mtime, bits: [offset,
    length]}}, then the Bloom filters' bytes, raw (a million jobs' filter is 2 MB: as base64 in
    JSON it cost more to write than the update it records). The previous release's all-JSON
    file (bits in base64) is read too; anything unreadable is ignored."""
    import base64

    try:
        with open(path, "rb") as handle:
            data = handle.read()
        meta, _, blobs = data.partition(b"\n")
        raw = json.loads(meta if blobs or meta.startswith(b'{"format"') else data)
        if raw.pop("format", None) == 2:
            bits = {name: bytearray(blobs[v["bits"][0]:v["bits"][0] + v["bits"][1]]) for name, v in raw.items()}
        else:
            bits = {name: bytearray(base64.b64decode(v["bits"])) for name, v in raw.items()}
        indexes = {name: HistoryIndex(int(v["inode"]), int(v["size"]), int(v["jobs"]), bits[name], int(v["check"]),
                                      int(v["mtime"]))
                   for name, v in raw.items() if name in HISTORY_FILE_OF.values() and v.get("hash") == "blake2b"}
        if any(len(i.bits) < 8 or len(i.bits) & (len(i.bits) - 1) for i in indexes.values()):
            return {}
        return indexes
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return {}


def dump_history_indexes(indexes: dict[str, HistoryIndex]) -> list[bytes]:
    meta: dict[str, Any] = {"format": 2}
    offset = 0
    for name, i in indexes.items():
        meta[name] = {"hash": "blake2b", "inode": i.inode, "size": i.size, "jobs": i.jobs, "check": i.check,
                      "mtime": i.mtime, "bits": [offset, len(i.bits)]}
        offset += len(i.bits)
    return [json.dumps(meta).encode() + b"\n", *(bytes(i.bits) for i in indexes.values())]


# Positions: <history file>.pos (processed.pos beside processed.json), a cache like history.idx.
# A 16-byte header (POSITIONS_MAGIC and the history file's inode), then one 16-byte record per
# job line in file order: 8 bytes of the id's digest (the Bloom filter's, so an id is hashed once) and
# the line's offset, little-endian.
# Finding an id among a million finished jobs reads 16 MB of records and one line: no JSON.
POSITIONS_MAGIC = b"QPOS\x02\x00\x00\x00"
POSITION_SIZE = 16


def positions_file(name: str) -> str:
    return name.rsplit(".", 1)[0] + ".pos"


def position_key(digest: bytes) -> bytes:
    """An id's key in a positions file, from its HistoryIndex.digest."""
    return digest[:8]


def positions_header(inode: int) -> bytes:
    return POSITIONS_MAGIC + (inode & (1 << 64) - 1).to_bytes(8, "little")


def write_positions(path: str, inode: int, records: bytes) -> None:
    """A new positions file (owner-only, fsynced) for the history file with this inode."""
    with new_private_file(path) as handle:
        handle.write(positions_header(inode) + records)
        handle.flush()
        os.fsync(handle.fileno())


def _offsets_of(positions: Any, count: int, keys: set[bytes]) -> dict[bytes, list[int]]:
    """The line offsets that the first `count` records of a positions file give for these keys,
    a megabyte of records at a time: a few keys are searched for with bytes.find; for many, one
    set intersection says which are in the chunk before any record is looked at in Python."""
    found: dict[bytes, list[int]] = {}
    wanted = {int.from_bytes(key, sys.byteorder): key for key in keys}  # as memoryview.cast("Q") reads them
    positions.seek(POSITION_SIZE)
    left = count * POSITION_SIZE
    while left > 0:
        chunk = positions.read(min(left, POSITION_SIZE << 16))
        chunk = chunk[:len(chunk) - len(chunk) % POSITION_SIZE]
        if not chunk:
            break
        left -= len(chunk)
        if len(keys) <= 8:
            for key in keys:
                at = chunk.find(key)
                while at >= 0:
                    if at % POSITION_SIZE == 0:
                        found.setdefault(key, []).append(int.from_bytes(chunk[at + 8:at + 16], "little"))
                    at = chunk.find(key, at + 1)
            continue
        records = memoryview(chunk).cast("Q")
        numbers = records[::2].tolist()
        if wanted.keys() & set(numbers):
            for index, number in enumerate(numbers):
                if number in wanted:
                    at = index * POSITION_SIZE + 8
                    found.setdefault(wanted[number], []).append(int.from_bytes(chunk[at:at + 8], "little"))
    return found


def _history_job(line: bytes) -> dict[str, Any] | None:
    """One line of a history file as a job (None: not a job line)."""
    line = line.rstrip(b"\r\n")
    if line.endswith(b","):
        line = line[:-1]
    if not line.startswith(b"{"):
        return None
    try:
        job = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return job if type(job) is dict else None


class ActiveCopies:
    """The active copies of given ids, from queue.json's text as it was under the lock (one
    job a line, id first), looked up after the lock is released; an id-to-line table is built
    on first use. `parse_all` stands in when the file is not in that layout."""

    def __init__(self, text: str | None, parse_all: Callable[[], list[dict[str, Any]]] | None) -> None:
        self.text = text
        self.jobs = {job["id"]: job for job in parse_all()} if text is None and parse_all else None
        self.lines: dict[str, int] | None = None

    def of(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        if self.jobs is not None:
            return {job_id: self.jobs[job_id] for job_id in ids if job_id in self.jobs}
        if not self.text:
            return {}
        if self.lines is None:
            self.lines = {m.group(1): m.start() for m in _LINE_ID.finditer(self.text)}
        found = {}
        for job_id in ids:
            at = self.lines.get(job_id)
            if at is not None:
                found[job_id] = json.loads(self.text[at:self.text.index("\n", at)].rstrip(","))
        return found


def _batches(items: Iterable[dict[str, Any]], size: int = 500) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _finished_at(job: dict[str, Any]) -> float:
    return _epoch(job.get("finished_at") or job.get("updated_at"))


def _finished_since(newest_first: Iterable[dict[str, Any]], since: float) -> Iterator[dict[str, Any]]:
    """The jobs that finished at `since` or later, from a history read from its end: it stops
    5 minutes before `since` (jobs are appended in the order they finish, give or take a
    batch or another host's clock)."""
    for job in newest_first:
        finished = _finished_at(job)
        if finished >= since:
            yield job
        elif finished < since - 300:
            return


def text_hint(text: str) -> bytes | None:
    """Bytes that every ASCII history line whose job contains `text` (in any case) holds when
    lowercased, so such lines without them need no parsing (a line with other characters is
    parsed anyway: "K", the Kelvin sign, lowercases to "k"); None when there are no such bytes:
    a non-ASCII text, or one with characters JSON escapes."""
    if not text.isascii() or any(c in text for c in '"\\') or any(ord(c) < 32 or ord(c) == 127 for c in text):
        return None
    return text.lower().encode()


def _may_hold(text: bytes, hint: bytes | None) -> bool:
    """Can these bytes of a history file hold a job that a text_hint's text matches?"""
    return hint is None or hint in text.lower() or not text.isascii()


class HistoryView:
    """The history files as they were when Store.history_view took it, under the lock, to be
    read after the lock is released, while workers go on appending. A history file changes
    only by appends, which rewrite just its closing three bytes, and by rewrites that replace
    it whole (os.replace): so the bytes before its length minus three stay as they were, in
    the file this view keeps open, whatever happens to its name. Jobs are checked as they are
    read (check_record); a line that is not a job is reported like any damage."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[Any, int, HistoryIndex, Any]] = {}  # name -> (file, end, index, positions)

    def add(self, name: str, path: str, index: HistoryIndex, positions_path: str) -> None:
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            return
        except OSError as error:
            raise QueueError(f"cannot read {path}: {error.strerror}.") from None
        positions = None
        try:
            positions = open(positions_path, "rb")
            size = os.fstat(positions.fileno()).st_size
            if (positions.read(POSITION_SIZE) != positions_header(index.inode)
                    or size < POSITION_SIZE * (index.jobs + 1)):
                positions.close()
                positions = None  # not this file's (a crash between two renames): scan instead
        except OSError:
            positions = None
        self.files[name] = (handle, max(0, index.size - 3), index, positions)

    def __enter__(self) -> HistoryView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle, _, _, positions in self.files.values():
            handle.close()
            if positions is not None:
                positions.close()
        self.files = {}

    def find(self, ids: Iterable[str], names: Iterable[str] = HISTORY_FILE_OF.values()) -> dict[str, dict[str, Any]]:
        """The history record of each of these ids that has one (the newest, if a crash left two)."""
        ids = [job_id for job_id in dict.fromkeys(ids) if ID_PATTERN.match(job_id)]  # no other id can exist
        wanted = set(ids)
        copies: dict[str, list[dict[str, Any]]] = {}
        names = [name for name in names if name in self.files and self.files[name][2].jobs]
        digests = {job_id: HistoryIndex.digest(job_id.encode()) for job_id in ids}  # one hash an id, for every file
        for name in names:
            handle, end, index, positions = self.files[name]
            maybe = {job_id.encode(): job_id for job_id in ids if index.might_hold(job_id, digests[job_id])}
            if not maybe:
                continue
            keys = {position_key(digests[job_id]): raw for raw, job_id in maybe.items()}
            lines = None if positions is None else self._lines_at(name, keys)
            if lines is None:
                lines = self._scan_for(handle, end, set(maybe))
            for line in lines:
                job = _history_job(line)
                if job is not None and job.get("id") in wanted:
                    check_record(handle.name, job, (STATE_OF_FILE[name],))
                    copies.setdefault(job["id"], []).append(job)
        return {job_id: newest_copy(found) for job_id, found in copies.items()}

    def _lines_at(self, name: str, by_key: dict[bytes, bytes]) -> list[bytes] | None:
        """The lines the positions file gives for these ids (by their position_key); None when one
        is not the line of its id (a positions file that lies is removed, so the next command
        writes it anew)."""
        handle, end, index, positions = self.files[name]
        lines = []
        for key, offsets in _offsets_of(positions, index.jobs, set(by_key)).items():
            for offset in offsets:
                handle.seek(offset)
                line = handle.readline() if offset < end else b""
                if not line.startswith(b'{"id":' + json.dumps(by_key[key].decode()).encode() + b","):
                    self._distrust(name)
                    return None
                lines.append(line)
        return lines

    def _distrust(self, name: str) -> None:
        handle, end, index, positions = self.files[name]
        try:
            if os.path.samestat(os.fstat(positions.fileno()), os.stat(positions.name)):
                os.unlink(positions.name)
        except OSError:
            pass
        positions.close()
        self.files[name] = (handle, end, index, None)

    @staticmethod
    def _scan_for(handle: Any, end: int, ids: set[bytes]) -> list[bytes]:
        """The lines of these ids, read through the whole file (no positions file to use)."""
        needles = [b'\n{"id":' + json.dumps(raw.decode()).encode() + b"," for raw in ids]
        lines = []
        for _, region in _regions(handle, 0, end):
            for needle in needles:
                at = region.find(needle)
                while at >= 0:
                    stop = region.find(b"\n", at + 1)
                    lines.append(region[at + 1:stop if stop >= 0 else len(region)])
                    at = region.find(needle, at + 1)
        return lines

    def forward(self, name: str, hint: bytes | None = None) -> Iterator[dict[str, Any]]:
        """The jobs of one history file, oldest first, a megabyte at a time; with a hint, only
        those whose line holds it in any case (see text_hint), which are not parsed otherwise."""
        return (job for job, _ in self.lines(name, hint))

    def lines(self, name: str, hint: bytes | None = None) -> Iterator[tuple[dict[str, Any], bytes]]:
        """(job, its line as written, without the comma) of one history file, oldest first."""
        if name not in self.files:
            return
        handle, end, _, _ = self.files[name]
        for _, region in _regions(handle, 0, end):
            if not _may_hold(region, hint):
                continue
            for line in region.split(b"\n"):
                if line and line != b"[" and _may_hold(line, hint):
                    line = line[:-1] if line.endswith(b",") else line
                    yield self._checked(name, line), line

    def backward(self, name: str, hint: bytes | None = None) -> Iterator[dict[str, Any]]:
        """The jobs of one history file, newest first, a megabyte at a time from its end (a hint
        as for forward)."""
        if name not in self.files:
            return
        handle, position, _, _ = self.files[name]
        carry = b""
        while position > 0:
            start = max(0, position - (1 << 20))
            handle.seek(start)
            lines = (handle.read(position - start) + carry).split(b"\n")
            carry, position = (lines.pop(0) if start else b""), start
            for line in reversed(lines):
                if line and line != b"[" and _may_hold(line, hint):
                    yield self._checked(name, line)

    def _checked(self, name: str, line: bytes) -> dict[str, Any]:
        job = _history_job(line)
        path = self.files[name][0].name
        if job is None:
            raise CorruptFileError(path, f"a line is not a job: {line[:80]!r}")
        check_record(path, job, (STATE_OF_FILE[name],))
        return job


class FolderStore(BaseStore):
    """Every read and write of the state files, in queue verbs.

    queue.json holds active jobs (pending, processing, failed) and is replaced
    atomically; processed.json (completed), failed.json (dead, the DLQ) and
    cancelled.json are append-only histories written one job per line. A
    process keeps what it parsed and the line of every job, so it neither
    re-parses a file that has not changed since it wrote it nor re-serialises
    jobs that did not change.
    """

    _process_locks: dict[str, Any] = {}
    _process_locks_guard = threading.Lock()

    def __init__(self, home: str) -> None:
        self.location = self.location_for_jobs = self._folder = os.path.abspath(home)
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._jobs: dict[str, dict[str, Any]] = {}
        self._lines: dict[str, bytes] = {}  # each job's line as written, so unchanged jobs are not re-serialised
        self._signature: tuple[int, int, int] | None = None
        self._seq: dict[str, int] = {}
        self._next_seq = 0
        self._ready: list[tuple[int, int, str]] = []
        self._scheduled: list[tuple[float, str]] = []
        self._processing: set[str] = set()
        self._failed: set[str] = set()
        self._waiters: dict[str, set[str]] = {}  # id -> the ids of active jobs that wait for it
        self._config: dict[str, Any] | None = None
        self._config_signature: tuple[int, int, int] | None = None
        self.notes: list[str] = []
        self._home_ready = False
        self._pinned: int | None = None
        self._indexes: dict[str, HistoryIndex] | None = None
        self._prepared: dict[str, tuple[HistoryIndex, str]] = {}  # prepare_history's scans, their positions
        self._indexes_changed = False  # history.idx is behind self._indexes
        self._checked_text: tuple[tuple[int, int, int], str | None] | None = None
        self._watch: HistoryWatch | None = None  # the history files since the last cancel() (ended_since_cancel)
        self._identity: tuple[int, int] | None = None  # the data folder's (device, inode), once lost() looked

    # -- paths, lock and files --------------------------------------------

    def _path(self, name: str) -> str:
        return os.path.join(self._folder, name)

    def _ensure_home(self) -> None:
        if self._home_ready:
            return
        if not os.path.isdir(self._folder):
            try:
                make_private_folders(self._folder)
            except OSError as error:
                raise QueueError(f"cannot create the data folder {self._folder}: {error.strerror}.") from None
        self._home_ready = True

    def _ensure_folder(self, name: str) -> str:
        """A folder inside the data folder (logs/, workers/), owner-only. It never creates the
        data folder itself: a worker whose data folder vanished must not go on in a new one."""

        path = self._path(name)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not os.path.isdir(path):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
        return path

    def _file_lock(self) -> Any:
        """One lock object per lock file per process (see make_file_lock)."""
        path = self._path(LOCK_FILE)
        with FolderStore._process_locks_guard:
            lock = FolderStore._process_locks.get(path)
            if lock is None:
                lock = FolderStore._process_locks[path] = make_file_lock(path)
            return lock

    def _locked(self, write: bool = True) -> _Locked:
        """Threads first, then the file lock: one writer across all processes.
        A reader does not create the data folder (nothing to read there yet)."""
        return _Locked(self, write)

    @staticmethod
    def _signature_of(path: str) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self, name: str) -> bytes | None:
        path = self._path(name)
        try:  # O_NONBLOCK: a FIFO put in a file's place must not hang the command
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            return None
        except OSError as error:
            raise QueueError(f"cannot read {path}: {error.strerror}.") from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise not_a_file(path, mode)
            with os.fdopen(fd, "rb") as handle:
                fd = -1
                return handle.read()
        except OSError as error:
            raise QueueError(f"cannot read {path}: {error.strerror}.") from None
        finally:
            if fd >= 0:
                os.close(fd)

    def _check_kinds(self) -> None:
        """Every state file that exists is a regular file (a FIFO would hang every
        reader while it holds the lock). A few stat calls per lock acquisition."""
        for name in STATE_FILES:
            try:
                mode = os.stat(self._path(name)).st_mode
            except OSError:
                continue
            if not stat.S_ISREG(mode):
                raise not_a_file(self._path(name), mode)

    def _write(self, name: str, data: bytes | list[bytes], durable: bool = True) -> None:
        self._ensure_home()
        try:
            atomic_write(self._path(name), data, durable)
        except OSError as error:
            raise QueueError(f"cannot write {self._path(name)}: {error.strerror}; "
                             "the previous file is unchanged.") from None

    def _append(self, name: str, lines: list[str]) -> None:
        """Append jobs to a history array in one write that replaces its closing bracket."""
        if not lines:
            return
        self._ensure_home()
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
        except OSError as error:
            raise QueueError(f"cannot write {path}: {error.strerror}.") from None
        try:
            size = os.fstat(fd).st_size
            tail = b""
            if size:
                os.lseek(fd, max(0, size - 3), os.SEEK_SET)
                tail = os.read(fd, 3)
            if size == 0:  # a new file: its name must be durable too
                offset, data = 0, "[\n" + ",\n".join(lines) + "\n]\n"
            elif tail == b"\n]\n" and size == 4:  # "[\n]\n": empty array
                offset, data = 1, "\n" + ",\n".join(lines) + "\n]\n"
            elif tail == b"\n]\n":
                offset, data = size - 3, ",\n" + ",\n".join(lines) + "\n]\n"
            else:
                # Not in the layout queuectl writes (edited by hand, or torn):
                # rewrite it in that layout once, then append.
                os.close(fd)
                fd = -1
                self._canonicalize(name)
                self._append(name, lines)
                return
            os.lseek(fd, offset, os.SEEK_SET)
            payload = data.encode("utf-8")
            try:
                written = os.write(fd, payload)
                while written < len(payload):
                    written += os.write(fd, payload[written:])
                os.fsync(fd)
                if size == 0:
                    _fsync_dir(self._folder)
            except OSError:
                # Not acknowledged, so not done: put the old end back (best effort; a
                # crash instead leaves a tail the next load repairs).
                _quietly(lambda: self._cut_back(name, size))
                raise
        except OSError as error:
            raise QueueError(f"cannot write {path}: {error.strerror}.") from None
        finally:
            if fd >= 0:
                os.close(fd)

    def _cut_back(self, name: str, size: int) -> None:
        """Undo an append: the file as it was at `size` bytes (none at 0)."""
        if size == 0:
            os.unlink(self._path(name))
            return
        fd = os.open(self._path(name), os.O_RDWR | getattr(os, "O_BINARY", 0))
        try:
            _write_at(fd, size - 3, b"\n]\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _canonicalize(self, name: str) -> None:
        """Rewrite a file in the layout an append needs (it parses, or it is reported)."""
        _, lines, _ = parse_array_file(self._path(name), self._read(name) or b"")
        self._write(name, render_array(lines))

    def _repair_history(self, name: str, relayout: bool = False) -> list[dict[str, Any]]:
        """Load a history file, rewriting it if a crash tore its tail (or, with
        relayout, if a person reformatted it: back to one job per line, id first)."""
        data = self._read(name)
        if data is None:
            return []
        jobs, lines, repaired = parse_array_file(self._path(name), data)
        for job in jobs:
            check_record(self._path(name), job, (STATE_OF_FILE[name],))
        if relayout and not repaired:
            lines = [dump_line({"id": job["id"], **job}).encode("utf-8") for job in jobs]
            repaired = render_array(lines) != data
        if repaired:
            self._write(name, render_array(lines))
            self.notes.append(f"note: rewrote {self._path(name)} in queuectl's layout ({repair_reason(data)}).")
        return jobs

    def finished_count(self, state: str) -> int:
        """Jobs in a history file, from its index (no re-reading of old lines)."""
        with self._locked(write=False):
            return self._history_index(HISTORY_FILE_OF[state]).jobs

    def check(self) -> None:
        """Fail early on a damaged state file (history files by their shape)."""
        with self._locked(write=False):
            self._load_queue()
            for state in HISTORY_FILE_OF:
                self.finished_count(state)

    def _ids_in_history(self, ids: list[str]) -> dict[str, str]:
        """Which of these ids the history holds, by state (call with the lock held). The Bloom
        filters rule most ids out; a possible hit is looked up in the positions file."""
        with self._history_view() as view:
            return {job_id: job["state"] for job_id, job in view.find(ids).items()}

    def _find_in_history(self, job_id: str) -> tuple[str, dict[str, Any]] | None:
        """The history record of one job, or None (call with the lock held)."""
        with self._history_view() as view:
            job = view.find([job_id]).get(job_id)
        return (job["state"], job) if job else None

    def _snapshot(self, parse_all: bool = True) -> tuple[ActiveCopies, HistoryView]:
        """queue.json's text and the history files as they are now (call with the lock held; read
        both after releasing it). Without parse_all, a queue.json in another layout is not parsed."""
        return ActiveCopies(self._queue_text(), self._active if parse_all else None), self._history_view()

    def _history_view(self) -> HistoryView:
        """The history files as they are now, with their indexes brought up to date (call with
        the lock held; read the view after releasing it)."""
        view = HistoryView()
        for name in HISTORY_FILE_OF.values():
            index = self._history_index(name, save=False)
            if index.size:
                view.add(name, self._path(name), index, self._path(positions_file(name)))
        self._save_indexes()
        return view

    def _history_index(self, name: str, save: bool = True) -> HistoryIndex:
        """The index of a history file, brought up to date by reading only the
        bytes appended since it was last indexed (all of a file that changed
        in any other way). The scan also checks the file's shape; a file of
        any other shape goes through the full parser, which mends a tail torn
        by a crash or reports the damage."""
        if self._indexes is None:
            self._indexes = load_history_indexes(self._path(HISTORY_INDEX_FILE))
        path = self._path(name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return HistoryIndex()
        except OSError as error:
            raise QueueError(f"cannot read {path}: {error.strerror}.") from None
        index = self._indexes.get(name)
        ready = None  # the positions file of a scan prepare_history made without the lock, if it still fits
        if self._caches_fit(name, st):
            if index.size == st.st_size:
                return index
        else:
            index, ready = self._prepared.pop(name, (None, None))
            if index is not None and not index.fits(path, st):
                _quietly(lambda: os.unlink(ready))
                index, ready = None, None
        scanned = (index, b"") if index is not None and index.size == st.st_size else _scan_into(path, index)
        if scanned is None:
            self._repair_history(name, relayout=True)  # raises, or rewrites the file whole
            index, ready = None, None
            scanned = _scan_into(path, None)
            if scanned is None:
                raise CorruptFileError(path, "it does not hold one job per line")
        updated, records = scanned
        fresh = index is None or updated.jobs * POSITION_SIZE == len(records)  # a scan that started over
        if ready and not fresh:
            try:
                with open(ready, "ab") as handle:
                    handle.write(records)
                replace_with_retry(ready, self._path(positions_file(name)))
            except OSError:
                _quietly(lambda: os.unlink(ready))
        else:
            if ready:
                _quietly(lambda: os.unlink(ready))
            self._save_positions(name, updated, records, fresh)
        self._indexes[name] = updated
        self._indexes_changed = True
        if save:
            self._save_indexes()
        return updated

    def _save_indexes(self) -> None:
        """Write history.idx if an index changed (a cache: not fsynced, and a failure only means
        the next command scans again)."""
        if self._indexes_changed and self._indexes is not None and os.path.isdir(self._folder):
            self._indexes_changed = False
            _quietly(lambda: atomic_write(self._path(HISTORY_INDEX_FILE), dump_history_indexes(self._indexes),
                                          durable=False, sync=False))

    def prepare(self) -> None:
        self._prepare_history()

    def close(self) -> None:
        self._discard_prepared()
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def _prepare_history(self) -> None:
        """Index, without the lock, a history file whose caches are missing or out of date (a
        new folder, a deleted history.idx, a file rewritten by hand): a full scan takes seconds
        for a million jobs, and the lock would stop every worker meanwhile. The file only
        grows, so what is read now stays true; _history_index, under the lock, then reads just
        what was appended since."""
        if self._indexes is None:
            self._indexes = load_history_indexes(self._path(HISTORY_INDEX_FILE))
        for name in HISTORY_FILE_OF.values():
            path = self._path(name)
            try:
                st = os.stat(path)
                if not stat.S_ISREG(st.st_mode) or self._caches_fit(name, st):
                    continue  # (not a file: the lock's check says so)
                scanned = _scan_into(path, None)
            except OSError:
                continue
            if scanned is None:  # (a file in another layout is for the locked scan to repair)
                continue
            # Its positions too: written (and fsynced) here, renamed into place under the lock.
            index, records = scanned
            ready = f"{self._path(positions_file(name))}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                write_positions(ready, index.inode, records)
            except OSError:
                _quietly(lambda ready=ready: os.unlink(ready))
                continue
            self._prepared[name] = (index, ready)

    def _discard_prepared(self) -> None:
        """Remove the positions files prepare_history wrote that no locked update took."""
        for _, ready in self._prepared.values():
            _quietly(lambda ready=ready: os.unlink(ready))
        self._prepared = {}

    def _caches_fit(self, name: str, st: os.stat_result) -> bool:
        """Do history.idx's entry and the positions file still describe this history file (whose
        stat is `st`), at least a prefix of it?"""
        index = self._indexes.get(name) if self._indexes else None
        return index is not None and index.fits(self._path(name), st) and self._positions_cover(name, index)

    def _positions_cover(self, name: str, index: HistoryIndex) -> bool:
        """Does the positions file belong to this history file and hold the index's records?"""
        try:
            with open(self._path(positions_file(name)), "rb") as handle:
                return (handle.read(POSITION_SIZE) == positions_header(index.inode)
                        and os.fstat(handle.fileno()).st_size >= POSITION_SIZE * (index.jobs + 1))
        except OSError:
            return False

    def _save_positions(self, name: str, index: HistoryIndex, records: bytes, fresh: bool) -> None:
        """Write the position records of the jobs an index scan added: a new file for a scan
        from the start, else after the records the index counted before (a cache: a failure
        only means the next command scans again)."""
        path = self._path(positions_file(name))
        try:
            if fresh:
                atomic_write(path, [positions_header(index.inode), records], durable=False)
                return
            fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
            try:
                _write_at(fd, POSITION_SIZE * (index.jobs - len(records) // POSITION_SIZE + 1), records)
            finally:
                os.close(fd)
        except OSError:
            pass

    # -- queue.json, cached ------------------------------------------------

    def _load_queue(self) -> None:
        """Bring the cache up to date with queue.json (call with the lock held)."""
        path = self._path(QUEUE_FILE)
        signature = self._signature_of(path)
        if signature == self._signature and signature is not None:
            return
        if signature is None:
            self._reset_cache({}, {})
            self._signature = None
            return
        old = self._signature
        if old and signature[0] == old[0] and signature[1] > old[1] and self._load_appended(old[1]):
            self._remember_queue_file()
            return
        data = self._read(QUEUE_FILE) or b""
        jobs, lines, repaired = parse_array_file(path, data)
        if not all(_valid_fast(job, ACTIVE_STATES) for job in jobs):
            for job in jobs:
                check_record(path, job, ACTIVE_STATES)  # says which job, and what is wrong
        by_id = {job["id"]: job for job in jobs}
        if len(by_id) != len(jobs):
            twice = next(job_id for job_id in by_id if sum(j["id"] == job_id for j in jobs) > 1)
            raise CorruptFileError(path, f"job {twice!r} appears twice")
        self._reset_cache(by_id, dict(zip((job["id"] for job in jobs), lines)))
        if repaired:
            self._save_queue()
            self.notes.append(f"note: rewrote {path} in queuectl's layout ({repair_reason(data)}).")
        self._remember_queue_file()

    def _load_appended(self, old_size: int) -> bool:
        """Parse only the jobs another process appended since our last write."""
        try:
            with open(self._path(QUEUE_FILE), "rb") as handle:
                handle.seek(old_size - 3)
                tail = handle.read().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return False
        if not tail.startswith(",\n") or not tail.endswith("\n]\n"):
            return False
        added = []
        for line in tail[2:-3].split("\n"):
            line = line.rstrip(",")
            try:
                job = json.loads(line)
            except ValueError:
                return False
            if not isinstance(job, dict) or job.get("id") in self._jobs:
                return False
            check_record(self._path(QUEUE_FILE), job, ACTIVE_STATES)
            added.append((job, line))
        for job, line in added:
            self._add_to_cache(job, line.encode("utf-8"))
        return True

    def _reset_cache(self, jobs: dict[str, dict[str, Any]], lines: dict[str, str]) -> None:
        """Index a freshly read queue.json in one pass (what _track and _index do per job)."""
        self._jobs, self._lines = jobs, lines
        self._seq = dict(zip(jobs, range(len(jobs))))
        self._next_seq = len(jobs)
        self._ready, self._scheduled = [], []
        self._processing, self._failed = set(), set()
        self._waiters = {}
        now = now_ts()
        for seq, (job_id, job) in enumerate(jobs.items()):
            state = job["state"]
            if state == "processing":
                self._processing.add(job_id)
                continue
            if job.get("waiting_for"):
                self._track(job)
                continue
            if state == "failed":
                self._failed.add(job_id)
            run_at = job.get("run_at")
            due = _epoch(run_at) if run_at else 0.0
            if due <= now:
                self._ready.append((-job.get("priority", 0), seq, job_id))
            else:
                self._scheduled.append((due, job_id))
        heapq.heapify(self._ready)
        heapq.heapify(self._scheduled)

    def _add_to_cache(self, job: dict[str, Any], line: bytes | None = None) -> None:
        self._jobs[job["id"]] = job
        self._lines[job["id"]] = line if line is not None else dump_line(job).encode("utf-8")
        self._seq[job["id"]] = self._next_seq
        self._next_seq += 1
        self._track(job)
        self._file_for_claim(job)

    def _file_for_claim(self, job: dict[str, Any]) -> None:
        """File a claimable job under 'due now' or 'due later'."""
        if job["state"] == "processing" or job.get("waiting_for"):
            return
        run_at = job.get("run_at")
        due = _epoch(run_at) if run_at else 0.0
        if due <= now_ts():
            heapq.heappush(self._ready, (-job.get("priority", 0), self._seq[job["id"]], job["id"]))
        else:
            heapq.heappush(self._scheduled, (due, job["id"]))

    def _keep_active(self, job: dict[str, Any]) -> None:
        self._jobs[job["id"]] = job
        self._lines[job["id"]] = dump_line(job).encode("utf-8")
        self._track(job)

    def _track(self, job: dict[str, Any]) -> None:
        """Keep the ids of processing and failed jobs at hand (no scans), and of the jobs that wait
        for each job (an entry may be out of date: the job's waiting_for decides)."""
        job_id, state = job["id"], job["state"]
        (self._processing.add if state == "processing" else self._processing.discard)(job_id)
        (self._failed.add if state == "failed" else self._failed.discard)(job_id)
        for dep in job.get("waiting_for", ()):
            self._waiters.setdefault(dep, set()).add(job_id)

    def _remove(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        self._lines.pop(job_id, None)
        self._seq.pop(job_id, None)
        self._processing.discard(job_id)
        self._failed.discard(job_id)

    def _save_queue(self, durable: bool = True) -> None:
        """Rewrite queue.json. A worker's rounds skip the folder fsync: if a power
        cut loses the rename, the older queue.json is still whole, and the
        history file (fsynced first) says which of its jobs had finished."""
        body = b",\n".join(self._lines.values())
        self._write(QUEUE_FILE, [b"[\n", body, b"\n]\n"] if body else [b"[\n]\n"], durable)
        self._remember_queue_file()

    def _remember_queue_file(self, platform: str = sys.platform) -> None:
        """Note the signature of the queue.json this process knows. On POSIX keep
        it open too, so its inode number cannot be reused by a later file and
        (inode, size, mtime) really identifies what we parsed. (On Windows an
        open handle would block other processes' os.replace.)"""
        path = self._path(QUEUE_FILE)
        if platform != "win32":
            if self._pinned is not None:
                os.close(self._pinned)
                self._pinned = None
            try:
                self._pinned = os.open(path, os.O_RDONLY)
            except OSError:
                pass
        self._signature = self._signature_of(path)

    def _append_queue(self, jobs: list[dict[str, Any]]) -> None:
        """Add new jobs to queue.json in place (durable, no rewrite of the others)."""
        lines = [dump_line(job) for job in jobs]
        cache_current = self._signature is not None and self._signature == self._signature_of(self._path(QUEUE_FILE))
        self._append(QUEUE_FILE, lines)
        if cache_current:
            for job, line in zip(jobs, lines):
                self._add_to_cache(job, line.encode("utf-8"))
            self._remember_queue_file()

    # -- config -------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        path = self._path(CONFIG_FILE)
        signature = self._signature_of(path)
        if self._config is not None and signature == self._config_signature:
            return self._config
        config = dict(DEFAULT_CONFIG)
        data = self._read(CONFIG_FILE)
        if data is not None:
            try:
                stored = json.loads(decode_input(data, path))
            except (ValueError, QueueError, RecursionError) as error:
                raise CorruptFileError(path, str(error)) from None
            if not isinstance(stored, dict):
                raise CorruptFileError(path, "expected a JSON object of settings")
            for key, value in stored.items():
                name = config_key(key, path)
                try:
                    config[name] = validate_config_value(name, value)
                except QueueError as error:
                    raise CorruptFileError(path, str(error)) from None
        self._config, self._config_signature = config, signature
        return config

    def set_config(self, key: str, value: Any) -> None:
        with self._locked():
            current = self.config()
            stored = {k: v for k, v in current.items() if k in DEFAULT_CONFIG}
            stored[key] = value
            self._write(CONFIG_FILE, (json.dumps(stored, indent=2) + "\n").encode())
            self._config = None

    # -- queue verbs --------------------------------------------------------

    def enqueue(self, jobs: list[dict[str, Any]]) -> None:
        """Add jobs, all or nothing; an id that exists anywhere is refused."""
        seen: set[str] = set()
        for job in jobs:
            if job["id"] in seen:
                raise QueueError(f"job id {job['id']!r} appears twice in the input; nothing was enqueued.")
            seen.add(job["id"])
        with self._locked():
            self._refuse_taken(seen, "enqueued")
            jobs = entering_jobs(jobs, self._states_held, now_ts())
            cancelled = [job for job in jobs if job["state"] == "cancelled"]  # behind a dead or cancelled job
            if cancelled:
                self._append(CANCELLED_FILE, [dump_line(job) for job in cancelled])
            self._append_queue([job for job in jobs if job["state"] != "cancelled"])

    def _refuse_taken(self, ids: set[str], what: str) -> None:
        """JobExists if one of these ids is a job already (call with the lock held)."""
        active = {job["id"]: job["state"] for job in self._active(ids=ids)}
        if active:
            job_id, state = next(iter(active.items()))
            raise JobExists(f"job {job_id!r} already exists ({state}, in {QUEUE_FILE}); nothing was {what}.")
        taken = self._ids_in_history(list(ids))
        if taken:
            job_id, state = next(iter(taken.items()))
            raise JobExists(f"job {job_id!r} already exists ({state}, in "
                             f"{HISTORY_FILE_OF[state]}); nothing was {what}.")

    def restore(self, jobs: list[dict[str, Any]]) -> None:
        """Finished jobs are appended to their history files (in the order they finished), then
        the others to queue.json."""
        with self._locked():
            self._refuse_taken({job["id"] for job in jobs}, "imported")
            for state, name in HISTORY_FILE_OF.items():
                finished = sorted((job for job in jobs if job["state"] == state), key=_finished_at)
                if finished:
                    self._append(name, [dump_line(job) for job in finished])
            self._append_queue([job for job in jobs if job["state"] not in FINISHED_STATES])

    def jobs(self, state: str | None = None, limit: int | None = None,
             where: Callable[[dict[str, Any]], bool] | None = None, newest_first: bool = False,
             hint: bytes | None = None) -> list[dict[str, Any]]:
        """Jobs in one state, or all of them (active first, then the history, oldest first or
        newest first), those `where` accepts, up to `limit`; `hint` (text_hint) lets history
        lines that cannot match go unparsed. A job that a crash left in two files is shown
        once, as its latest copy. The history is read after the lock is released, only as far
        as the limit needs."""
        history_states = FINISHED_STATES if state is None else (state,) if state in FINISHED_STATES else ()
        with self._locked(write=False):
            listed = [] if state in FINISHED_STATES else self._active(state, None if where else limit)
            active, view = self._snapshot(parse_all=bool(history_states))
        with view:
            result = [job for job in self._latest_only(listed, "active", active, view) if where is None or where(job)]
            for history_state in history_states:
                if limit is not None and len(result) >= limit:
                    break
                name = HISTORY_FILE_OF[history_state]
                jobs = view.backward(name, hint) if newest_first else view.forward(name, hint)
                for batch in _batches(job for job in jobs if where is None or where(job)):
                    result.extend(self._latest_only(batch, history_state, active, view))
                    if limit is not None and len(result) >= limit:
                        break
            return result[:limit] if limit is not None else result

    @staticmethod
    def _latest_only(jobs: list[dict[str, Any]], source: str, active: ActiveCopies,
                     view: HistoryView) -> list[dict[str, Any]]:
        """These jobs (from queue.json, "active", or a history file), less the copies that a
        crash between two writes left behind: a job found in two files is shown once, as
        its latest state (the later updated_at)."""
        if not jobs:
            return jobs
        others = {} if source == "active" else active.of([job["id"] for job in jobs])
        names = [name for state, name in HISTORY_FILE_OF.items() if state != source]
        for job_id, job in view.find([job["id"] for job in jobs], names).items():
            if newer_copy(job, others.get(job_id)):
                others[job_id] = job
        return [job for job in jobs if job["id"] not in others or not newer_copy(others[job["id"]], job)]

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._locked(write=False):
            copies = self._active(ids=[job_id])
            view = self._history_view()
        with view:
            copies += view.find([job_id]).values()
        return newest_copy(copies)

    def counts(self) -> dict[str, int]:
        """Jobs per state (and how many pending ones wait for a later run_at)."""
        with self._locked(write=False):
            counts = dict.fromkeys(STATES, 0)
            counts["scheduled"] = counts["waiting"] = 0
            now = now_ts()
            text = self._queue_text()
            if text is not None:
                for state in ACTIVE_STATES:
                    counts[state] = text.count(f'"state":"{state}"')
                scheduled = (_RUN_AT_IN_LINE.search(line) for line in _lines_with(text, '"run_at":"')
                             if '"state":"pending"' in line)
                counts["scheduled"] = sum(1 for m in scheduled if m and _epoch(m.group(1)) > now)
                counts["waiting"] = text.count('"waiting_for":')
            else:
                for job in self._active(parse_all=True):
                    counts[job["state"]] += 1
                    if job["state"] == "pending" and job.get("run_at") and _epoch(job["run_at"]) > now:
                        counts["scheduled"] += 1
                    counts["waiting"] += bool(job.get("waiting_for"))
            for state in HISTORY_FILE_OF:
                counts[state] = self.finished_count(state)
            if counts["dead"]:
                counts["dead"] -= self._stale_dead_count(text)
            return counts

    def _stale_dead_count(self, text: str | None) -> int:
        """Dead copies that a crash inside `dlq retry` left behind a newer queued copy."""
        index = self._history_index(FAILED_FILE)
        queued = ({m.group(1): None for m in _LINE_ID.finditer(text)} if text is not None
                  else {job["id"]: None for job in self._active(parse_all=True)})
        maybe = [job_id for job_id in queued if index.might_hold(job_id)]
        if not maybe:
            return 0
        active = {job["id"]: job for job in self._active(ids=maybe)}
        return sum(1 for job in self._repair_history(FAILED_FILE) if job["id"] in active
                   and newer_copy(active[job["id"]], job))

    def _active(self, state: str | None = None, limit: int | None = None, ids: Iterable[str] | None = None,
                parse_all: bool = False) -> list[dict[str, Any]]:
        """Active jobs from queue.json (all, one state, or some ids), parsing
        only the lines asked for. A file that is not in the layout queuectl
        writes is parsed in full (which reports damage or mends a torn tail).
        """
        text = None if parse_all else self._queue_text()
        if text is None:
            self._load_queue()
            wanted = None if ids is None else set(ids)
            found = [dict(job) for job in self._jobs.values()
                     if (state is None or job["state"] == state) and (wanted is None or job["id"] in wanted)]
            return found[:limit] if limit is not None else found
        if state is not None:
            lines: Iterable[str] = _lines_with(text, f'"state":"{state}"')
        elif ids is not None and len(ids := set(ids)) <= 16:
            lines = (line for job_id in ids for line in _lines_with(text, f'{{"id":{json.dumps(job_id)},')
                     if line.startswith(f'{{"id":{json.dumps(job_id)},'))
        elif ids is not None:
            lines = (line for line in _lines_with(text, "\n{")
                     if (head := _LINE_ID.match(line)) and head.group(1) in ids)
        else:
            lines = _lines_with(text, "\n{")
        result: list[dict[str, Any]] = []
        for line in lines:
            if limit is not None and len(result) >= limit:
                break
            try:
                job = json.loads(line)
            except ValueError as error:
                raise CorruptFileError(self._path(QUEUE_FILE), str(error)) from None
            check_record(self._path(QUEUE_FILE), job, ACTIVE_STATES)
            result.append(job)
        return result

    def _queue_text(self) -> str | None:
        """queue.json as text, if it is in the layout queuectl writes: '[', one
        job a line, each with one active state, ']'. None otherwise."""
        path = self._path(QUEUE_FILE)
        signature = self._signature_of(path)
        if signature is None:
            return "[\n]\n"
        if signature == self._signature:
            return render_array(self._lines.values()).decode("utf-8")
        if self._checked_text and self._checked_text[0] == signature:
            return self._checked_text[1]  # `status` reads it twice: check it once
        text = self._check_queue_text(self._read(QUEUE_FILE) or b"")
        self._checked_text = (signature, text)
        return text

    @staticmethod
    def _check_queue_text(data: bytes) -> str | None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        lines = jobs_a_line(text)
        if not lines:
            return text if lines == 0 else None
        if sum(text.count(f'"state":"{state}"') for state in ACTIVE_STATES) != lines:
            return None  # a job in a state that does not belong here: the full parser says which
        try:
            jobs = json.loads(text)  # one C-speed pass: the file parses, and every job can run
        except (ValueError, RecursionError):
            return None
        if len(jobs) != lines or not all(type(job) is dict and _valid_fast(job, ACTIVE_STATES) for job in jobs):
            return None  # the full parser names the job and what is wrong with it
        if len({job["id"] for job in jobs}) != lines:
            return None  # an id twice: the full parser says which
        return text

    def worker_round(self, outcomes: list[Outcome], want: int, worker: WorkerIdentity, recover: bool = False,
                     running: Iterable[tuple[str, int]] = ()
                     ) -> tuple[list[tuple[dict[str, Any], str]], list[dict[str, Any]], list[str]]:
        """One locked round for a worker process: record what its threads
        finished, recover jobs of dead workers, and claim up to `want` due jobs.

        Returns ([(job, what happened)], [claimed jobs], [ids of its jobs to stop]).
        """
        with self._locked():
            self._load_queue()
            config = self.config()
            now = now_ts()
            recorded = self._settle_outcomes(outcomes, config, now, worker)
            changed = False
            if recover:
                recovered, changed = self._recover(config, now, worker)
                recorded.extend((job, "recovered") for job in recovered)
            claimed = [] if os.path.exists(self._path(PAUSE_FILE)) else self._claim(want, worker, now)
            if recorded or claimed or changed:
                self._save_queue(durable=False)
            cancels = [job_id for job_id in self._processing if (job := self._jobs[job_id]).get("cancel_requested_at")
                       and holds_claim(job, worker)]
            cancels += [job_id for job_id, attempt in running
                        if not holds_claim(self._jobs.get(job_id), worker, attempt)]  # taken over: stop it
            return recorded, claimed, cancels

    def _settle_outcomes(self, outcomes: list[Outcome], config: dict[str, Any], now: float,
                         worker: WorkerIdentity) -> list[tuple[dict[str, Any], str]]:
        done: list[tuple[dict[str, Any], str]] = []
        to_processed: list[dict[str, Any]] = []
        to_failed: list[dict[str, Any]] = []
        to_cancelled: list[dict[str, Any]] = []
        for outcome in outcomes:
            job = self._jobs.get(outcome.job_id)
            if not holds_claim(job, worker, outcome.attempt):
                continue  # recovered meanwhile: not ours to record
            job, what = settle_outcome(job, outcome, config, now, _chance)
            done.append((job, what))
            if what in HISTORY_FILE_OF:
                {"completed": to_processed, "dead": to_failed, "cancelled": to_cancelled}[what].append(job)
            else:  # failed (its retry scheduled), or back to pending
                self._keep_active(job)
                self._file_for_claim(job)
        self._append_finished(PROCESSED_FILE, to_processed)
        self._append_finished(FAILED_FILE, to_failed)
        self._append_finished(CANCELLED_FILE, to_cancelled)
        self._drop_stale_dead(to_processed + to_failed + to_cancelled)
        return done

    def _drop_stale_dead(self, written: list[dict[str, Any]]) -> None:
        """After jobs reached a history file: remove older copies of them from the DLQ, which
        a crash inside an earlier `dlq retry` may have left there (cheap when there are none)."""
        index = self._history_index(FAILED_FILE)
        if not index.jobs or not any(index.might_hold(job["id"]) for job in written):
            return
        listed = self._repair_history(FAILED_FILE)
        newest: dict[str, int] = {}
        for position, job in enumerate(listed):
            best = newest.get(job["id"])
            if best is None or not newer_copy(listed[best], job):  # of equals, the later line
                newest[job["id"]] = position
        fresh = {job["id"]: job for job in written}
        keep = [job for position, job in enumerate(listed) if newest[job["id"]] == position
                and (job["id"] not in fresh or fresh[job["id"]]["state"] == "dead")]
        if len(keep) != len(listed):
            self._write(FAILED_FILE, render_array([dump_line(job).encode("utf-8") for job in keep]))

    def _append_finished(self, name: str, jobs: list[dict[str, Any]]) -> None:
        """Move finished jobs to a history file. Destination first: a crash between
        the two writes leaves a job in both files, and the history copy wins. The jobs
        that waited for them go on (dependency_ended), in the same save of queue.json."""
        self._append(name, [dump_line(job) for job in jobs])
        for job in jobs:
            self._remove(job["id"])
        self._end_waits(jobs)

    def _end_waits(self, ended: list[dict[str, Any]]) -> None:
        """The jobs waiting for these finished ones: crossed off, claimable, or cancelled too."""
        now = now_ts()
        cancelled = []
        for job in ended:
            for waiter_id in sorted(self._waiters.pop(job["id"], ())):
                waiter = self._jobs.get(waiter_id)
                if waiter is None or job["id"] not in waiter.get("waiting_for", ()):
                    continue
                waiter = dependency_ended(waiter, job["id"], job["state"], now)
                if waiter["state"] == "cancelled":
                    cancelled.append(waiter)
                else:
                    self._keep_active(waiter)
                    self._file_for_claim(waiter)  # claimable once it waits for nothing
        if cancelled:
            self._append_finished(CANCELLED_FILE, cancelled)  # and those that wait for them

    def _claim(self, want: int, worker: WorkerIdentity, now: float) -> list[dict[str, Any]]:
        """Highest priority first, then the oldest, among the jobs that are due."""
        while self._scheduled and self._scheduled[0][0] <= now:
            _, job_id = heapq.heappop(self._scheduled)
            job = self._jobs.get(job_id)
            if job and job["state"] != "processing":
                heapq.heappush(self._ready, (-job.get("priority", 0), self._seq[job_id], job_id))
        claimed = []
        while len(claimed) < want and self._ready:
            _, seq, job_id = heapq.heappop(self._ready)
            job = self._jobs.get(job_id)
            if job is None or job["state"] == "processing" or self._seq.get(job_id) != seq:
                continue
            if not is_due(job, now):
                # Not due after all (a retry's run_at, rounded to the millisecond, can be a
                # moment later than the clock that filed it): file it under 'due later'.
                heapq.heappush(self._scheduled, (_epoch(job["run_at"]), job_id))
                continue
            job = claimed_job(job, worker, now)
            self._keep_active(job)
            claimed.append(job)
        return claimed

    def next_due(self) -> float | None:
        """When the next claimable job is due, from the cache (a hint, no lock)."""
        if self._ready:
            return 0.0
        return self._scheduled[0][0] if self._scheduled else None

    def has_retries_waiting(self) -> bool:
        return bool(self._failed)

    def changed(self) -> bool:
        return self._signature_of(self._path(QUEUE_FILE)) != self._signature

    def recover_orphans(self) -> list[dict[str, Any]]:
        """Return jobs of dead workers to the queue (any command may do it)."""
        with self._locked(write=False):
            processing = self._active("processing")
            if not processing:
                return []
            beats = self._worker_heartbeats()
            lease = self.config()["lease_timeout"]
            now = now_ts()
            if all(worker_alive(job.get("host"), job.get("pid"), beats.get((job.get("host"), job.get("pid"))),
                                _epoch(job.get("started_at")), lease, now) for job in processing):
                return []
        with self._locked():
            self._load_queue()
            recovered, changed = self._recover(self.config(), now_ts(), None)
            if changed:
                self._save_queue()
            return recovered

    def _recover(self, config: dict[str, Any], now: float,
                 me: WorkerIdentity | None) -> tuple[list[dict[str, Any]], bool]:
        """Settle the jobs of dead workers. Returns (recovered jobs, whether the queue changed)."""
        processing = [self._jobs[job_id] for job_id in self._processing]
        workers = self.workers()
        beats = self._worker_heartbeats(workers)
        dead = dead_workers(workers, processing, config["lease_timeout"], now)
        if me is not None:
            dead.discard((me.host, me.pid))
        if not dead:
            return [], False
        recovered = []
        to_failed: list[dict[str, Any]] = []
        to_cancelled: list[dict[str, Any]] = []
        changed = False
        orphans = [job for job in processing if (job.get("host"), job.get("pid")) in dead]
        with self._history_view() as view:
            finished = view.find([job["id"] for job in orphans])
        for job in orphans:
            host, pid = job.get("host"), job.get("pid")
            beat = beats.get((host, pid))
            changed = True
            history = finished.get(job["id"])
            if history and newer_copy(history, job):
                self._remove(job["id"])  # it had finished; the crash came between two writes
                self._end_waits([history])
                continue
            # Kill the command the dead worker left running, if this host can and
            # the death is recent (an old pid may belong to someone else by now).
            kill = host == HOST and beat is not None and now - beat <= 2 * config["lease_timeout"]
            started = self._salvage_output(job, host, pid, kill)
            job, what = settle_orphan(job, started, now)
            if what == "cancelled":
                to_cancelled.append(job)
            elif what == "dead":
                to_failed.append(job)
            else:
                self._keep_active(job)
                self._file_for_claim(job)
            recovered.append(job)
        self._append_finished(FAILED_FILE, to_failed)
        self._append_finished(CANCELLED_FILE, to_cancelled)
        if changed:  # the decisions on disk before the evidence they consumed goes
            self._save_queue()
        for host, pid in dead:
            self.forget_worker(host or "", pid or 0)  # every job of theirs is settled now
        return recovered, changed

    def dlq_retry(self, ids: list[str] | None) -> list[str]:
        """Move dead jobs back to pending with attempts reset to 0."""
        with self._locked():
            self._load_queue()
            # A crash in an earlier retry may have left a copy here of a job that was
            # queued, or even finished, again since: the newer copy wins, and this one goes.
            listed = self._repair_history(FAILED_FILE)
            with self._history_view() as view:
                dead = self._latest_only(listed, "dead", ActiveCopies(self._queue_text(), self._active), view)
            by_id = {job["id"]: job for job in dead}
            if ids is None:
                ids = list(by_id)
            for job_id in ids:
                if job_id not in by_id:
                    where = self._jobs.get(job_id, {}).get("state")
                    if where is None:
                        found = self._find_in_history(job_id)
                        where = found[0] if found else None
                    if where is None:
                        raise NoSuchJob(f"job {job_id!r} is not in the DLQ (no such job).")
                    raise QueueError(f"job {job_id!r} is not in the DLQ (it is {where}).")
            if not ids:
                if len(dead) != len(listed):
                    self._write(FAILED_FILE, render_array([dump_line(job).encode("utf-8") for job in dead]))
                return []
            now = now_ts()
            requeued = [revived(by_id[job_id], now) for job_id in dict.fromkeys(ids)]
            # Destination first (queue.json), then the DLQ without them.
            before = self._signature_of(self._path(QUEUE_FILE))
            self._append_queue(requeued)
            keep = [dump_line(job).encode("utf-8") for job in dead if job["id"] not in set(ids)]
            try:
                self._write(FAILED_FILE, render_array(keep))
            except QueueError:
                # Not done, so undone: cut the append off again (a crash here instead
                # leaves both copies, and the newer one wins).
                self._signature = None
                _quietly(lambda: self._cut_back(QUEUE_FILE, before[1] if before else 0))
                raise
            return [job["id"] for job in requeued]

    def requeue(self, ids: list[str], platform: str = sys.platform) -> list[str]:
        """The revived copies go to queue.json first, under the lock: from then on they are the
        jobs (the newer copy wins). Then the old copies leave their history files, as a purge
        takes them (their logs stay: a copy of each job remains)."""
        ids = list(dict.fromkeys(ids))
        with self._locked():
            self._load_queue()
            with self._history_view() as view:
                found = view.find([job_id for job_id in ids if job_id not in self._jobs])
            for job_id in ids:
                refusal = requeue_refusal(job_id, self._jobs.get(job_id) or found.get(job_id))
                if refusal:
                    raise refusal
            self._append_queue(requeued_jobs([found[job_id] for job_id in ids], self._states_held, now_ts()))
        for state in {found[job_id]["state"] for job_id in ids}:
            for _ in range(5):  # another purge or retry may replace the file meanwhile: then again
                if self._purge_file(HISTORY_FILE_OF[state], None, True, platform, only=set(ids)) is not None:
                    break
        return ids

    def cancel(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        """Cancel jobs. A pending or failed job goes to cancelled.json at once; a
        processing job is marked, and its worker kills the command and records
        it (a dead worker's job is settled here). Returns id -> (outcome, state):
        ("cancelled", was), ("requested", "processing"), ("finished", state) or
        ("unknown", ""). How the requested jobs end stays readable even if another
        command purges them at once (ended_since_cancel)."""
        with self._locked():
            self._load_queue()
            now = now_ts()
            results: dict[str, tuple[str, str]] = {}
            to_cancelled = []
            requested = False
            for job_id in dict.fromkeys(ids):
                job = self._jobs.get(job_id)
                history = self._find_in_history(job_id) if ID_PATTERN.match(job_id) else None
                what, state, changed = cancel_decision(job, history[1] if history else None, now)
                results[job_id] = (what, state)
                if what == "requested":
                    requested = True
                    if changed is not job:
                        self._keep_active(changed)
                elif what == "cancelled":
                    to_cancelled.append(changed)
            self._append_finished(CANCELLED_FILE, to_cancelled)  # destination first
            if requested:  # a job whose worker has died is cancelled now, its leftover command killed
                recovered, _ = self._recover(self.config(), now, None)
                for job in recovered:
                    if job["state"] == "cancelled" and results.get(job["id"], ("",))[0] == "requested":
                        results[job["id"]] = ("cancelled", "processing")
            if to_cancelled or requested:
                self._save_queue()
            if requested:
                self._watch_history()
            return results

    def ended_since_cancel(self, ids: Iterable[str]) -> dict[str, str]:
        if self._watch is None:
            return {}
        self._watch.look()
        return self._watch.endings(ids)

    def states_of(self, ids: Iterable[str]) -> dict[str, str]:
        """The current state of each of these jobs (an unknown id is left out)."""
        with self._locked(write=False):
            return self._states_held(ids)

    def _states_held(self, ids: Iterable[str]) -> dict[str, str]:
        """states_of, with the lock held."""
        ids = [job_id for job_id in ids if ID_PATTERN.match(job_id)]
        active = {job["id"]: job for job in self._active(ids=ids)}
        states = {job_id: job["state"] for job_id, job in active.items()}
        rest = [job_id for job_id in ids if job_id not in active]
        states.update(self._ids_in_history(rest))
        two = set(active) & set(self._ids_in_history(list(active)))
        if two:  # a crash left two copies: the latest wins
            with self._history_view() as view:
                found = view.find(list(two))
            for job_id in two:
                states[job_id] = newest_copy([active[job_id], found[job_id]])["state"]
        return states

    def _watch_history(self) -> None:
        """Start watching what is appended to the history files from now on (with the
        lock held). A missing file is created empty, so that it is watched too."""
        if self._watch is not None:
            self._watch.close()
        self._watch = watch = HistoryWatch([self._path(name) for name in HISTORY_FILE_OF.values()])
        for name in HISTORY_FILE_OF.values():
            if watch.paths and not os.path.exists(self._path(name)):
                self._write(name, render_array([]))
        watch.look(fresh=False)

    def active_jobs(self) -> list[dict[str, Any]]:
        """Every pending, processing and failed job."""
        with self._locked(write=False):
            return self._active()

    def finished_since(self, since: float | None = None) -> Iterator[dict[str, Any]]:
        """Finished jobs (completed, dead, cancelled), those finished at `since` or later, one
        at a time, read after the lock is released. With `since`, only the ends of the history
        files are read (with 5 minutes to spare: jobs are appended in the order they finish,
        give or take a batch or another host's clock)."""
        with self._locked(write=False):
            active, view = self._snapshot()
        with view:
            for state, name in HISTORY_FILE_OF.items():
                jobs = view.forward(name) if since is None else _finished_since(view.backward(name), since)
                for batch in _batches(jobs):
                    yield from self._latest_only(batch, state, active, view)

    def newest(self, state: str, limit: int) -> list[dict[str, Any]]:
        """The last `limit` jobs to reach a finished state, newest first (the end of its file only)."""
        return self.jobs(state, limit, newest_first=True)

    def purge(self, states: Iterable[str], before: float | None, apply: bool,
              platform: str = sys.platform) -> dict[str, int]:
        """Finished jobs in these states that finished before `before` (all when None), counted
        per state; with apply, deleted from their history files, with their logs unless another
        copy of the job remains. Active jobs are never touched. A file is read and its kept jobs
        copied into a new file without the lock (in bounded memory); the lock is held only to
        copy what workers appended meanwhile and to put the new file in place."""
        counts = {}
        for state in states:
            for _ in range(5):
                counted = self._purge_file(HISTORY_FILE_OF[state], before, apply, platform)
                if counted is not None:
                    counts[state] = counted
                    break
            else:  # another purge or a dlq retry replaced the file each time
                raise QueueError(f"{self._path(HISTORY_FILE_OF[state])} kept being rewritten by other commands "
                                 "during the purge; nothing more was deleted. Try again.")
        return counts

    def _purge_file(self, name: str, before: float | None, apply: bool, platform: str,
                    only: set[str] | None = None) -> int | None:
        """Purge one history file (of the jobs `only` names, when given): how many jobs went (or
        would go), None if another command replaced the file while it was being copied (nothing
        was changed then)."""
        with self._locked(write=False):
            active, view = self._snapshot()
        path = self._path(name)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        gone_ids = tmp + ".ids"
        try:
            with view:
                if name not in view.files:
                    return 0
                _, end, index, _ = view.files[name]
                removed, stale = self._copy_kept(view, name, before, active, tmp if apply else None, gone_ids, only)
                if not apply or not removed:
                    return removed
                scanned = _scan_into(tmp, None, room=index.jobs)
                if scanned is None:
                    raise CorruptFileError(path, "it changed while it was purged")
                write_positions(tmp + ".pos", scanned[0].inode, scanned[1])
                with self._locked():
                    if os.stat(path).st_ino != index.inode:
                        return None
                    self._load_queue()
                    # A copy in queue.json older than a purged record was left by a crash between
                    # two writes: it goes first, so a crash during the purge cannot bring it back.
                    stale = [job_id for job_id, purged in stale.items() if (job := self._jobs.get(job_id))
                             and not newer_copy(job, purged)]
                    if stale:
                        for job_id in stale:
                            self._remove(job_id)
                        self._save_queue()
                    self._put_purged_file(name, tmp, view, end, scanned, platform)
            self._remove_purged_logs(gone_ids)
            return removed
        finally:
            for leftover in (tmp, tmp + ".pos", gone_ids):
                _quietly(lambda leftover=leftover: os.unlink(leftover))

    def _copy_kept(self, view: HistoryView, name: str, before: float | None, active: ActiveCopies,
                   tmp: str | None, gone_ids: str, only: set[str] | None = None) -> tuple[int, dict[str, float]]:
        """Stream a history file as the view holds it: the jobs to keep go to `tmp` (when given),
        the ids of those that go to `gone_ids`. Returns how many go, and those of them that
        queue.json holds an older copy of (id -> the purged copy's updated_at)."""
        removed = 0
        stale: dict[str, dict[str, Any]] = {}
        out = new_private_file(tmp) if tmp else None
        ids = new_private_file(gone_ids) if tmp else None
        try:
            first = True
            if out:
                out.write(b"[\n")
            for batch in _batches(view.lines(name)):
                doomed = [job for job, _ in batch if (before is None or _finished_at(job) < before)
                          and (only is None or job["id"] in only)]
                removed += len(doomed)
                if not out:
                    continue
                doomed_ids = {job["id"] for job in doomed}
                for job, line in batch:
                    if job["id"] not in doomed_ids:
                        out.write(line if first else b",\n" + line)
                        first = False
                ids.write(b"".join(job["id"].encode() + b"\n" for job in doomed))
                for job_id in active.of(list(doomed_ids)):
                    stale[job_id] = newest_copy(job for job in doomed if job["id"] == job_id)
            if out:
                out.write(b"\n]\n" if not first else b"]\n")
                out.flush()
                os.fsync(out.fileno())
        finally:
            for handle in (out, ids):
                if handle:
                    handle.close()
        return removed, stale

    def _put_purged_file(self, name: str, tmp: str, view: HistoryView, end: int,
                         scanned: tuple[HistoryIndex, bytes], platform: str) -> None:
        """With the lock held: add to the purged copy what was appended to the file since it was
        read, and the positions of those jobs to its positions file, and put both in place. On
        Windows the view is closed first (an open file cannot be replaced there); elsewhere it
        stays open until the lock is released, so the old file's blocks are freed after it (a
        million jobs' file took 90 ms to free, inside the rename)."""
        path = self._path(name)
        index = scanned[0]
        old = view.files[name][0]
        appended = os.fstat(old.fileno()).st_size - 3 - end
        tail = b""
        if appended > 0:
            old.seek(end)
            tail = old.read(appended)  # ",\n{...},\n{...}": the jobs that finished meanwhile
        if platform == "win32":
            view.close()
        if tail:
            with open(tmp, "r+b") as out:
                size = os.fstat(out.fileno()).st_size
                if size == 4:  # "[\n]\n": nothing was kept
                    out.seek(1)
                    out.write(tail[1:] + b"\n]\n")
                else:
                    out.seek(size - 3)
                    out.write(tail + b"\n]\n")
                out.flush()
                os.fsync(out.fileno())
            more = _scan_into(tmp, index if size > 4 else None, room=index.jobs)
            if more is None:
                raise CorruptFileError(path, "jobs appended during the purge are not one a line")
            index, records = more
            if index.jobs * POSITION_SIZE == len(records):  # a scan that started over: all of them
                write_positions(tmp + ".pos", index.inode, records)
            else:
                with open(tmp + ".pos", "ab") as positions:
                    positions.write(records)
        replace_with_retry(tmp + ".pos", self._path(positions_file(name)))
        replace_with_retry(tmp, path)
        _fsync_dir(self._folder)
        if self._indexes is None:
            self._indexes = load_history_indexes(self._path(HISTORY_INDEX_FILE))
        self._indexes[name] = index
        self._indexes_changed = True
        self._save_indexes()

    def _remove_purged_logs(self, gone_ids: str) -> None:
        """Remove the logs of purged jobs that no copy is left of. Most jobs have none (a silent
        success leaves no log): those cost a stat each, and the others a lock per 500."""
        late = self._late_files()
        logs = self._path(LOGS_DIR)
        with open(gone_ids, "rb") as ids:
            while True:
                some = [line.rstrip(b"\n").decode() for line in itertools.islice(ids, 500)]
                if not some:
                    return
                stems = {job_id: safe_log_name(job_id)[:-4] for job_id in some}
                logged = [job_id for job_id, stem in stems.items()
                          if stem in late or os.path.exists(os.path.join(logs, f"{stem}.log"))]
                if not logged:
                    continue
                with self._locked():
                    left = {job["id"] for job in self._active(ids=logged)} | set(self._ids_in_history(logged))
                    for job_id in logged:
                        if job_id not in left:
                            self._remove_logs(job_id)

    def _remove_logs(self, job_id: str) -> None:
        """Delete a job's log, and the output its commands' leftover processes wrote later."""
        log, late = self._log_files(job_id)
        for path in [log] + [path for _, path, _ in late]:
            _quietly(lambda path=path: os.unlink(path))

    def _log_files(self, job_id: str) -> tuple[str, list[tuple[int, str, int]]]:
        """A job's log (logs/<id>.log), and its late output as [(attempt, path, offset)]: the file
        logs/late/<id>.<attempt>.<offset>.late.log, whose output after `offset` was written once
        the attempt had ended. (Late files have a folder of their own: they are few, and listing
        logs/ itself would cost as much as the history is long.)"""
        stem = safe_log_name(job_id)[:-4]
        folder = self._path(LOGS_DIR)
        return os.path.join(folder, f"{stem}.log"), self._late_files().get(stem, [])

    def _late_files(self) -> dict[str, list[tuple[int, str, int]]]:
        """Every late output file, by the log name's stem: {stem: [(attempt, path, offset)]}."""
        folder = os.path.join(self._path(LOGS_DIR), LATE_DIR)
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            names = self._move_old_late_files(folder)
        found: dict[str, list[tuple[int, str, int]]] = {}
        for name in names:
            parsed = late_name(name)
            if parsed:
                stem, attempt, offset = parsed
                found.setdefault(stem, []).append((attempt, os.path.join(folder, name), offset))
        for late in found.values():
            late.sort()
        return found

    def _move_old_late_files(self, folder: str) -> list[str]:
        """The previous release kept late output in logs/ itself, as <id>.<attempt>[.<offset>].late.log:
        move such files into logs/late/ (made now, so that this looks through logs/ only once).
        Their writers keep writing into them: a rename does not change an open file."""
        logs = self._path(LOGS_DIR)
        try:
            old = [name for name in os.listdir(logs) if name.endswith(".late.log")]
            make_private_folders(folder)
        except OSError:
            return []  # no logs/ yet, or a folder we cannot write: nothing to move
        moved = []
        for name in old:
            parsed = late_name(name, without_offset=True)
            if parsed is None:
                continue
            new = "{}.{}.{}.late.log".format(*parsed)
            try:
                os.replace(os.path.join(logs, name), os.path.join(folder, new))
                moved.append(new)
            except OSError:
                pass  # another process moved it first
        return moved

    def keep_output(self, job_id: str, attempt: int, worker: WorkerIdentity, header: bytes, source: Any,
                    start: int, end: int, ending: str, counted: bool = True) -> bool:
        """Append an attempt's output to the job's log (append_attempt) while the attempt is still
        this worker's claim, under the lock, so recovery cannot take the claim meanwhile. Returns
        False when it was taken (a worker suspended past its lease: recovery wrote its record)."""
        with self._locked():
            if not holds_claim(self._queued_copy(job_id), worker, attempt):
                return False
            append_attempt(self.log_location(job_id), header, source, start, end, ending,
                           int(self.config()["log_max_bytes"]), counted)
            return True

    def _queued_copy(self, job_id: str) -> dict[str, Any] | None:
        """The job as queue.json holds it (call with the lock held), read without changing the
        cache: a worker's main thread reads the cache without the lock (next_due)."""
        path = self._path(QUEUE_FILE)
        if self._signature is not None and self._signature_of(path) == self._signature:
            return self._jobs.get(job_id)
        data = self._read(QUEUE_FILE) or b"[]"
        at = data.find(b'\n{"id":' + json.dumps(job_id).encode() + b",")
        if at >= 0:  # queuectl's layout: one job a line, id first
            return json.loads(data[at:data.index(b"\n", at + 1)].rstrip(b","))
        return next((job for job in parse_array_file(path, data)[0] if job.get("id") == job_id), None)

    def _live_output(self, job: dict[str, Any]) -> str | None:
        """The scratch file a running attempt writes its output to (None when not running)."""
        if job.get("state") != "processing":
            return None
        return self._attempt_scratch(job, job.get("host", ""), job.get("pid", 0))

    def log_location(self, job_id: str) -> str:
        return os.path.join(self._path(LOGS_DIR), safe_log_name(job_id))

    def attempt_logs(self, job_id: str) -> list[Attempt]:
        """The records of logs/<id>.log (those of another id, which shares the file where names
        differ only in case, left out), each with its late output, past any hole capping left."""
        log_path, late_files = self._log_files(job_id)
        late = {attempt: (path, offset) for attempt, path, offset in late_files}
        try:
            handle = open(log_path, "rb")
        except FileNotFoundError:
            return []
        attempts = []
        for record in log_records(handle):
            if record.job_id not in (None, job_id):
                continue
            attempt = Attempt(record, handle)
            if record.counted and record.number in late:
                attempt.late = open_late_output(*late[record.number])
            attempts.append(attempt)
        return attempts

    def running_attempt(self, job: dict[str, Any]) -> Attempt | None:
        path = self._live_output(job)
        if path is None:
            return None
        try:
            handle = open(path, "rb")
        except OSError:
            return None
        header = handle.readline(LOG_LINE_MAX)
        record = scratch_attempt(header)
        if record is None or record.job_id != job["id"] or record.number != job["attempts"]:
            handle.close()
            return None
        record.output_end = os.fstat(handle.fileno()).st_size
        return Attempt(record, handle, more=lambda offset: _read_live(path, header, offset))

    def new_scratch(self, worker: WorkerIdentity, name: str) -> Any:
        path = self._worker_file(worker.host, worker.pid, f".{name}.out")
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
        try:
            return open(path, "w+b", opener=lambda name, _: os.open(name, flags, 0o600))
        except FileNotFoundError:  # workers/ was deleted: make it again (never the data folder)
            self._ensure_folder(WORKERS_DIR)
            return open(path, "w+b", opener=lambda name, _: os.open(name, flags, 0o600))

    def scratch_in_place(self, handle: Any) -> bool:
        """(A worker whose workers/ was emptied must not write where recovery cannot see it.)"""
        return _still_at(handle, handle.name)

    def remove_scratch(self, handle: Any) -> None:
        _quietly(lambda: os.unlink(handle.name))

    def keep_late_output(self, job_id: str, attempt: int, scratch: Any, end: int) -> None:
        """The scratch file moves into logs/late/, its name saying where the attempt's own output
        ended; the processes that hold it open write on into it."""
        scratch.close()
        late = os.path.join(self._path(LOGS_DIR), LATE_DIR, f"{safe_log_name(job_id)[:-4]}.{attempt}.{end}.late.log")
        _quietly(lambda: make_private_folders(os.path.dirname(late)))
        _quietly(lambda: os.replace(scratch.name, late))

    def cap_late_output(self, limit: int, platform: str = sys.platform) -> None:
        """Keep every late output file in logs/late/ within `limit` bytes on disk (Linux), whichever
        worker retired it: the processes that write them hold them open and write at their own
        offsets, so the blocks before the newest `limit` bytes are freed in place (a hole), not cut
        off. (The attempt's own output before the file's offset is in the log already.)"""
        if platform != "linux":
            return
        for late in self._late_files().values():
            for _, path, _ in late:
                try:
                    fd = os.open(path, os.O_WRONLY)
                except OSError:
                    continue
                try:
                    st = os.fstat(fd)
                    if st.st_blocks * 512 > limit + 2 * 4096:
                        punch_hole(fd, (st.st_size - limit) // 4096 * 4096, platform)
                finally:
                    os.close(fd)

    def clock(self) -> float:
        return now_ts()

    def schema_versions(self) -> None:
        return None  # files have no schema

    def migrate(self, dry_run: bool = False) -> list[str]:
        return []

    def attempt_started(self, job: dict[str, Any], worker: WorkerIdentity, header: bytes) -> bool:
        """The attempt's header in its scratch file in workers/ is the evidence already."""
        return True

    def on_change(self, wake: Callable[[], None]) -> None:
        """Files tell nobody: workers find changes by polling (cheaply: changed() compares a stat)."""

    def begin_worker(self, worker: WorkerIdentity) -> None:
        """The data folder, logs/ and workers/; the folder's identity, to notice it go (lost)."""
        self._ensure_home()
        try:
            for name in (LOGS_DIR, WORKERS_DIR):
                self._ensure_folder(name)
            st = os.stat(self._folder)
        except OSError as error:
            raise QueueError(f"cannot create the worker's folder {error.filename}: {error.strerror}.") from None
        self._identity = (st.st_dev, st.st_ino)

    def lost(self) -> str | None:
        """The data folder was deleted or replaced since begin_worker."""
        try:
            st = os.stat(self._folder)
            if (st.st_dev, st.st_ino) == self._identity:
                return None
        except OSError:
            pass
        return f"the data folder {self._folder} was deleted or replaced while this worker ran"

    # -- workers and the stop flag -----------------------------------------

    def _worker_file(self, host: str, pid: int, suffix: str = ".json") -> str:
        """workers/<host>-<pid>.json is a worker process's heartbeat; its threads'
        scratch files sit beside it as <host>-<pid>.<thread>.out."""
        safe_host = re.sub(r"[^A-Za-z0-9._-]", "_", host)[:64]
        return os.path.join(self._folder, WORKERS_DIR, f"{safe_host}-{pid}{suffix}")

    def _scratch_files(self, host: str, pid: int) -> list[str]:
        prefix = os.path.basename(self._worker_file(host, pid, "."))
        folder = self._path(WORKERS_DIR)
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [os.path.join(folder, n) for n in names if n.startswith(prefix) and n.endswith(".out")]

    def _attempt_scratch(self, job: dict[str, Any], host: str, pid: int) -> str | None:
        """The scratch file of a worker that holds this job's current attempt."""
        marker = f"=== {job['id']} attempt {job['attempts']} started ".encode()
        for path in self._scratch_files(host, pid):
            try:
                with open(path, "rb") as scratch:
                    if scratch.readline(4096).startswith(marker):
                        return path
            except OSError:
                continue
        return None

    def _salvage_output(self, job: dict[str, Any], host: str, pid: int, kill: bool) -> bool:
        """Copy a dead worker's partial output of this job's attempt into the job's log, after
        killing what is left of the command when `kill`. Returns whether that attempt had started
        at all. The scratch file stays: it is the evidence of that until the decision is saved
        (_recover removes it), and a recovery that runs again on it copies nothing twice."""
        path = self._attempt_scratch(job, host, pid)
        if path is None:
            return False
        try:
            with open(path, "rb") as scratch:
                header = scratch.readline(LOG_LINE_MAX)
                if kill:
                    stop_orphaned_command(command_pid_of(header),
                                          attempt_mark(job["id"], job["attempts"], WorkerIdentity(host, pid)))
                append_attempt(self.log_location(job["id"]), header, scratch,
                               len(header), os.fstat(scratch.fileno()).st_size, "the worker died",
                               int(self.config()["log_max_bytes"]))
        except OSError:
            pass  # the output is lost, the attempt still counts
        return True

    def forget_worker(self, host: str, pid: int) -> None:
        for path in self._scratch_files(host, pid) + [self._worker_file(host, pid)]:
            try:
                os.unlink(path)
            except OSError:
                pass

    def heartbeat(self, info: dict[str, Any]) -> None:
        path = self._worker_file(info["host"], info["pid"])
        try:
            self._ensure_folder(WORKERS_DIR)
            atomic_write(path, (json.dumps(info) + "\n").encode(), durable=False, sync=False)  # a torn one is skipped
        except OSError as error:
            raise OSError(error.errno, error.strerror, path) from None

    def workers(self) -> list[dict[str, Any]]:
        """Worker processes with their last heartbeat, and whether they look alive."""
        folder = self._path(WORKERS_DIR)
        try:
            names = sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        lease = self.config()["lease_timeout"]
        now = now_ts()
        result = []
        for name in names:
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(folder, name), "rb") as handle:
                    info = json.loads(handle.read())
                beat = _epoch(info["heartbeat_at"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if (type(info.get("pid")) is not int or type(info.get("host")) is not str
                    or type(info.get("threads", 0)) is not int):
                continue  # not a heartbeat queuectl wrote
            info["alive"] = worker_alive(info.get("host"), info.get("pid"), beat, beat, lease, now)
            result.append(info)
        return result

    def _worker_heartbeats(self, workers: list[dict[str, Any]] | None = None) -> dict[tuple[str, int], float]:
        """(host, pid) -> last heartbeat, of the given heartbeat files (default: all)."""
        return {(w["host"], w["pid"]): _epoch(w["heartbeat_at"])
                for w in (self.workers() if workers is None else workers)}

    def request_stop(self) -> None:
        self._ensure_home()
        atomic_write(self._path(STOP_FILE),
                     (json.dumps({"requested_at": iso(now_ts()), "epoch": now_ts()}) + "\n").encode())

    def stop_requested_at(self) -> float | None:
        return self._flag_time(STOP_FILE)

    def _flag_time(self, name: str) -> float | None:
        """When a flag file was set (its epoch; its mtime if edited by hand), None if it is not."""
        data = self._read(name)
        if data is None:
            return None
        try:
            return float(json.loads(data)["epoch"])
        except (ValueError, KeyError, TypeError):
            try:
                return os.stat(self._path(name)).st_mtime
            except OSError:
                return None

    def clear_stop(self) -> None:
        try:
            os.unlink(self._path(STOP_FILE))
        except FileNotFoundError:
            pass

    def pause(self) -> float | None:
        # Under the lock: a round either claimed before the flag was there, or sees it.
        with self._locked():
            since = self.paused_since()
            if since is None:
                self._write(PAUSE_FILE, (json.dumps({"paused_at": iso(now_ts()), "epoch": now_ts()}) + "\n").encode())
            return since

    def resume(self) -> bool:
        with self._locked():
            try:
                os.unlink(self._path(PAUSE_FILE))
            except FileNotFoundError:
                return False
            return True

    def paused_since(self) -> float | None:
        return self._flag_time(PAUSE_FILE)


class HistoryWatch:
    """Open descriptors on the history files, to learn how a job ended even if a
    purge removes it before anyone looks: a purge replaces a file, and a file
    that is open outlives its name (POSIX; on Windows holding it open would make
    the purge fail, so nothing is watched there)."""

    def __init__(self, paths: list[str], platform: str = sys.platform) -> None:
        self.paths = paths if platform != "win32" else []
        self.held: dict[tuple[int, int], tuple[int, int]] = {}  # (device, inode) -> (fd, offset read from)

    def look(self, fresh: bool = True) -> None:
        """Open the files not held yet: from their end at the start of the watch,
        whole when they appeared (or were replaced) since."""
        for path in self.paths:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            except OSError:
                continue
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in self.held or not stat.S_ISREG(st.st_mode):
                os.close(fd)
                continue
            # An append replaces a file's last 3 bytes ("\n]\n"): read from there.
            self.held[(st.st_dev, st.st_ino)] = (fd, 0 if fresh else max(0, st.st_size - 3))

    def endings(self, ids: Iterable[str]) -> dict[str, str]:
        """The state each of these jobs was recorded in since the watch began (the latest copy wins)."""
        wanted = set(ids)
        found: dict[str, dict[str, Any]] = {}
        for fd, offset in self.held.values():
            data = os.pread(fd, os.fstat(fd).st_size - offset, offset).decode("utf-8", "replace")
            for match in _LINE_ID.finditer(data):
                if match.group(1) not in wanted:
                    continue
                line = data[match.start():data.find("\n", match.start())].rstrip(",")
                try:
                    job = json.loads(line)
                except ValueError:
                    continue  # a line still being written
                if job["id"] not in found or not newer_copy(found[job["id"]], job):  # of equals, the later
                    found[job["id"]] = job
        return {job_id: job.get("state") for job_id, job in found.items()}

    def close(self) -> None:
        for fd, _ in self.held.values():
            _quietly(lambda fd=fd: os.close(fd))
        self.held = {}


def _write_at(fd: int, offset: int, data: bytes) -> None:
    """Cut a file at offset and write data there."""
    os.ftruncate(fd, offset)
    if hasattr(os, "pwrite"):
        os.pwrite(fd, data, offset)
    else:
        os.lseek(fd, offset, os.SEEK_SET)
        os.write(fd, data)


def _quietly(action: Callable[[], object]) -> None:
    """Clean-up that must not stop the clean-up after it."""
    try:
        action()
    except (QueueError, OSError):
        pass


def make_file_lock(path: str, platform: str = sys.platform) -> Any:
    """The cross-process lock of the data folder that holds the lock file `path`.

    On Windows, filelock.FileLock on queuectl.lock: a file that is open there
    cannot be deleted, so the lock cannot vanish while it is held. On POSIX a
    lock file can be deleted by anyone at any time (and a fresh opener would
    lock a new file while the first holder is still inside), so the lock is
    flock(2) on the data folder itself, taken directly: importing filelock costs
    more than Python's own start-up, and every one-shot command would pay it.
    """
    if platform == "win32":
        return _windows_lock_class()(path, timeout=LOCK_TIMEOUT, mode=0o600)
    return PosixFileLock(path)


def _windows_lock_class() -> type:
    """filelock.FileLock, with its Timeout told as LockTimeout (filelock is imported only here)."""
    from filelock import FileLock, Timeout

    class WindowsFileLock(FileLock):
        def acquire(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().acquire(*args, **kwargs)
            except Timeout:
                raise LockTimeout(self.lock_file) from None

    return WindowsFileLock


# flock(2) on a folder fails with these where locks are emulated with fcntl
# (NFS): there queuectl.lock is locked instead, and must not be deleted.
_NO_FOLDER_LOCK = {"EBADF", "EINVAL", "ENOLCK", "EOPNOTSUPP", "ENOTSUP"}


class PosixFileLock:
    """flock(2) on the data folder (the folder that holds the lock file `path`),
    with a timeout; a thread lock in front so the threads of one process
    exclude each other too. The folder cannot vanish while it is open and
    locked: if it is removed and made again, the new one is locked."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.target = os.path.dirname(os.path.abspath(path))
        self._fd: int | None = None
        self._threads = threading.Lock()

    def _open(self) -> int:
        if self.target == self.path:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return os.open(self.target, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

    def acquire(self, timeout: float = LOCK_TIMEOUT) -> None:
        import fcntl

        if not self._threads.acquire(timeout=timeout):
            raise LockTimeout(self.target)
        try:
            deadline = time.monotonic() + timeout
            delay = 0.0005
            while True:
                if self._fd is None:
                    self._fd = self._open()
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(self.target) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.01)
                    continue
                except OSError as error:
                    if self.target == self.path or errno.errorcode.get(error.errno) not in _NO_FOLDER_LOCK:
                        raise
                    os.close(self._fd)  # this file system cannot lock a folder: lock the file
                    self._fd, self.target = None, self.path
                    continue
                if self._same_file():
                    return
                os.close(self._fd)  # the folder (or lock file) was replaced under us: lock the new one
                self._fd = None
        except BaseException:
            self._threads.release()
            raise

    def _same_file(self) -> bool:
        try:
            held, there = os.fstat(self._fd), os.stat(self.target)  # type: ignore[arg-type]
        except OSError:
            return False
        return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)

    def release(self) -> None:
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # type: ignore[arg-type]
        finally:
            self._threads.release()


def not_a_file(path: str, mode: int) -> QueueError:
    """The error for a state file that is a folder, a FIFO, a device or a socket."""
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device")
    return QueueError(f"{path} is {kind}, not a regular file; nothing was changed. "
                      "Move it away, then run the command again.")


class _Locked:
    """Re-entrant context: the thread lock, then (outermost only) the file lock."""

    def __init__(self, store: BaseStore, write: bool) -> None:
        self.store = store
        self.write = write
        self.holds_file = False

    def __enter__(self) -> FolderStore:
        store = self.store
        store._thread_lock.acquire()
        if store._depth == 0 and (self.write or os.path.isdir(store.location)):
            store._ensure_home()
            self.holds_file = True
            try:
                store._file_lock().acquire()
            except Exception as error:
                store._thread_lock.release()
                if isinstance(error, LockTimeout):
                    raise LockTimeout(f"the queue in {store.location} is locked by another queuectl process "
                                      f"for more than {LOCK_TIMEOUT:.0f} s; try again.") from None
                if isinstance(error, OSError):
                    raise QueueError(f"cannot lock the queue in {store.location}: {error.strerror}.") from None
                raise
            try:
                store._check_kinds()
            except QueueError:
                store._file_lock().release()
                store._thread_lock.release()
                raise
        store._depth += 1
        return store

    def __exit__(self, exc_type: object, *exc: object) -> None:
        store = self.store
        store._depth -= 1
        if exc_type is not None and store._depth == 0:
            # The cache may hold changes that never reached the file: read the file again next time.
            store._signature = None
        if self.holds_file:
            store._file_lock().release()
        store._thread_lock.release()


# Where a job line's run_at is. Inside a JSON string every quote is escaped, so
# markers such as '"state":"pending"' cannot match text inside a command.
_RUN_AT_IN_LINE = re.compile(r'"run_at":"([^"\\]*)"')
_LINE_ID = re.compile(r'^\{"id":"([^"\\]*)",', re.M)


def _lines_with(text: str, marker: str) -> Iterator[str]:
    """The job lines (trailing comma removed) of a one-job-per-line array that contain marker."""
    start = 0
    while (index := text.find(marker, start)) >= 0:
        begin = index + 1 if marker.startswith("\n") else text.rfind("\n", 0, index) + 1
        end = text.find("\n", begin)
        line = text[begin:end]
        yield line[:-1] if line.endswith(",") else line
        start = end


def safe_log_name(job_id: str) -> str:
    """A file name for any valid id, on every platform. A valid id is already a
    valid name, bar Windows' device names (CON, NUL.txt, ...): those get a '_'
    in front, which no id can start with. (The '.log' after it means a name
    never ends in a dot, which Windows would drop.)"""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", job_id)[:64] or "_"
    if stem.split(".")[0].upper() in WINDOWS_RESERVED:
        stem = "_" + stem
    return stem + ".log"


WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{n}" for p in ("COM", "LPT") for n in range(1, 10)}


def late_name(name: str, without_offset: bool = False) -> tuple[str, int, int] | None:
    """(log stem, attempt, offset) of a late output file's name, <stem>.<attempt>.<offset>.late.log;
    with without_offset, also the oldest release's <stem>.<attempt>.late.log (offset 0)."""
    if not name.endswith(".late.log"):
        return None
    parts = name[:-len(".late.log")].rsplit(".", 2)
    if len(parts) == 3 and parts[0] and parts[1].isdigit() and parts[2].isdigit():
        return parts[0], int(parts[1]), int(parts[2])
    if without_offset and len(parts) >= 2 and parts[-1].isdigit():
        return ".".join(parts[:-1]), int(parts[-1]), 0
    return None


_FALLOCATE: Any = None  # libc's fallocate, loaded on first use


def punch_hole(fd: int, length: int, platform: str = sys.platform) -> bool:
    """Free the disk blocks of a file's first `length` bytes, keeping its size and every writer's
    offset: fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) on Linux. False where that
    cannot be done (another platform, a file system without holes)."""
    if platform != "linux" or length <= 0:
        return False
    global _FALLOCATE
    if _FALLOCATE is None:
        import ctypes

        _FALLOCATE = ctypes.CDLL(None, use_errno=True).fallocate
        _FALLOCATE.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return _FALLOCATE(fd, 3, 0, length) == 0


def _read_live(path: str, header: bytes, offset: int) -> bytes | None:
    """Output of a running attempt from `offset` on, or None once its scratch file starts
    with another header (another attempt; checked again after the read)."""
    try:
        with open(path, "rb") as handle:
            if handle.readline(LOG_LINE_MAX) != header:
                return None
            handle.seek(len(header) + offset)
            chunk = handle.read(1 << 20)
            handle.seek(0)
            return chunk if handle.readline(LOG_LINE_MAX) == header else None
    except OSError:
        return None


def _still_at(handle: Any, path: str) -> bool:
    """Is this open file still the one at path (not deleted, not replaced)?"""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except (OSError, ValueError):  # ValueError: it was closed
        return False


def _log_end(log: Any) -> tuple[int, tuple[Any, ...] | None]:
    """Where the next record goes (the end of the log, less a last record a crash cut short),
    and the identity of the last whole record."""
    end, last = os.fstat(log.fileno()).st_size, None
    for record in log_records(log):
        if record.torn:
            return record.start, last
        last = record.identity() if record.ending is not None and record.problem is None else None
    return end, last


def append_attempt(path: str, header: bytes, source: Any, start: int, end: int, ending: str,
                   limit: int, counted: bool = True) -> None:
    """Append one attempt's record to a job's log: `header` is the attempt's first line in its
    scratch file, source[start:end] its output, of which the newest that fit in `limit` are kept.

    All or nothing: on an OSError (a full disk) the log is cut back to what it was and the error
    raised. An attempt the log already ends with (a recovery that died before it saved its
    decision had copied it) is not appended again; a last record a crash cut short is replaced."""
    attempt = _SCRATCH_HEADER.match(header.rstrip(b" \n") + b"\n")
    if attempt is None:
        raise OSError(f"its scratch file does not start with an attempt header: {header[:80]!r}")
    size = end - start
    room = max(0, limit - len(header) - 250)  # what fits beside the header and the footer
    if size > room:  # keep only the newest output the log would keep, from a whole line
        source.seek(end - room)
        size = room - len(source.readline(min(LOG_LINE_MAX, room)))
    removed = end - start - size
    line = (header.rstrip(b" \n") + (b"" if counted else b" (not counted)")
            + f": {size} bytes of output follow".encode()
            + (f" ({removed} older bytes removed: log_max_bytes)".encode() if removed else b"") + b"\n")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
    try:
        with open(path, "rb") as current:
            before, last = _log_end(current)
            torn = before < os.fstat(current.fileno()).st_size
        if last == LogRecord(0, attempt).identity():
            return
        try:
            if torn:
                os.ftruncate(fd, before)
            os.lseek(fd, before, os.SEEK_SET)
            _write_fully(fd, line)
            source.seek(end - size)
            while size > 0:
                chunk = source.read(min(size, 1 << 20))
                if not chunk:
                    raise OSError("its output shrank while it was copied")
                _write_fully(fd, chunk)
                size -= len(chunk)
            if end > start and not _ends_with_newline(source, end):
                _write_fully(fd, b"\n")
            _write_fully(fd, f"=== attempt {attempt.group(2).decode()} ended: {ending}\n".encode())
        except OSError:
            _quietly(lambda: os.ftruncate(fd, before))
            raise
    finally:
        os.close(fd)
    cap_log(path, limit)


def _write_fully(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def cap_log(path: str, limit: int) -> None:
    """Keep a log at most `limit` bytes, dropping its oldest records (a note says so)."""
    try:
        size = os.path.getsize(path)
        if size <= limit:
            return
        note = f"=== older output removed: this log keeps the newest {limit} bytes (log_max_bytes)\n".encode()
        with open(path, "rb") as handle:
            starts = [record.start for record in log_records(handle)]
            fits = [start for start in starts if size - start + len(note) <= limit]
            cut = fits[0] if fits else starts[-1] if starts else 0  # a record is never cut in two
            handle.seek(cut)
            kept = handle.read()
        atomic_write(path, [note, kept], durable=False)
    except OSError:
        pass  # the log stays longer than asked; the job's result does not depend on it


def _ends_with_newline(handle: Any, end: int) -> bool:
    handle.seek(end - 1)
    return handle.read(1) == b"\n"


# --------------------------------------------------------------------------
# 8. Running one attempt: output capture, timeout, tree kill
# --------------------------------------------------------------------------


class Runner:
    """Runs one attempt of a job: output capture, timeout, tree kill.

    A command writes into a scratch file in workers/, taken from a pool that is
    reused from job to job (creating a file costs more than running `true`);
    a file goes back to the pool once its attempt's result is recorded. After
    the attempt its output (if any) is appended to logs/<id>.log, with a header
    and a footer line; a silent successful attempt leaves no log. A worker that
    dies leaves its scratch files, and recovery learns from them which attempts
    had started and moves their output into the jobs' logs.
    """

    def __init__(self, store: BaseStore, identity: WorkerIdentity) -> None:
        self.store = store
        self.identity = identity
        self.running: dict[str, tuple[subprocess.Popen, str]] = {}  # job id -> (command, attempt mark)
        self.cancelled: set[str] = set()  # ids `queuectl cancel` asked to stop
        self.abort = threading.Event()
        self.abort_reason: str | None = None  # why kill_all ran, when not a second Ctrl+C
        self._lock = threading.Lock()
        # Scratch files, reused: free ones, and those whose attempt is not recorded yet (kept
        # untouched until it is, as recovery's evidence that the attempt started).
        self._free: list[Any] = []
        self.guardian = Guardian(identity)
        self._held: dict[tuple[str, int], tuple[str, Any]] = {}
        self._made = 0

    def _take_scratch(self, header: bytes) -> tuple[str, Any]:
        """A scratch file that holds only this header. WorkerFault when the worker cannot
        write one (workers/ gone or not a folder, a full disk): then the job never starts."""
        with self._lock:
            handle = self._free.pop() if self._free else None
            if handle is None:
                self._made += 1
            name = str(self._made)
        try:
            if handle is not None and not self.store.scratch_in_place(handle):  # recovery could not see it
                _quietly(handle.close)
                handle = None
            if handle is None:
                handle = self.store.new_scratch(self.identity, name)
            handle.seek(0)
            handle.truncate()
            handle.write(header)
            handle.flush()
        except OSError as error:
            where = error.filename or (handle.name if handle is not None else "")
            if handle is not None:
                _quietly(handle.close)
                self.store.remove_scratch(handle)
            raise WorkerFault(f"this worker cannot write its scratch file {where}: {error.strerror}") from None
        return handle.name, handle

    def _clock(self) -> float:
        """The queue's time (a database server's, as the store last saw it; this host's if it cannot
        say now), so an attempt's start is stamped as every other time of its job."""
        try:
            return self.store.clock()
        except QueueError:
            return now_ts()

    def _free_scratch(self, handle: Any) -> None:
        with self._lock:
            self._free.append(handle)

    def check_scratch(self) -> None:
        """WorkerFault unless a scratch file can be written now (the file goes back to the pool)."""
        _, handle = self._take_scratch(b"=== free\n")
        with self._lock:
            self._free.append(handle)

    def settled(self, outcomes: list[Outcome]) -> None:
        """These attempts are recorded: their scratch files may be reused."""
        with self._lock:
            for outcome in outcomes:
                item = self._held.pop((outcome.job_id, outcome.attempt), None)
                if item:
                    self._free.append(item[1])

    def run(self, job: dict[str, Any], worker: str, timeout: float | None, shell: str = "auto",
            starting: Callable[[], None] | None = None) -> Outcome:
        """Run one attempt; `starting` is called once its scratch file is ready (WorkerFault before that)."""
        import subprocess

        started = self._clock()
        clock = time.monotonic()
        header = attempt_header(job["id"], job["attempts"], started, worker, self.identity)
        path, out = self._take_scratch(header)
        try:
            ours = self.store.attempt_started(job, self.identity, header)
        except QueueError as error:  # the store cannot hear of it now: the job does not start
            self._free_scratch(out)
            raise WorkerFault(f"this worker cannot record that {job['id']} starts: {error}") from None
        if not ours:  # taken over meanwhile (this worker was taken for dead): it is not ours to run
            self._free_scratch(out)
            return Outcome(job["id"], job["attempts"], "released", worker=worker, started=started)
        if starting:
            starting()
        with self._lock:
            self._held[(job["id"], job["attempts"])] = (path, out)
        result = Outcome(job["id"], job["attempts"], worker=worker, started=started)
        if job["id"] in self.cancelled:  # cancelled as it was about to start: it never runs
            with self._lock:
                self.cancelled.discard(job["id"])
            result.kind = "released"
            return result
        # The mark lets recovery find the command even if this process dies before it knows its pid.
        # QUEUECTL_HOME: a job that enqueues a follow-up job reaches this queue, not its folder's.
        # The job's own variables go over the worker's (QUEUECTL_HOME too), never over its mark.
        mark = attempt_mark(job["id"], job["attempts"], self.identity)
        env = command_environment(os.environ, {"QUEUECTL_HOME": self.store.location_for_jobs}, job.get("env") or {},
                                  {"QUEUECTL_ATTEMPT": mark})
        args, use_shell = shell_invocation(job["command"], job.get("shell") or shell)
        cwd = job.get("cwd")  # none in jobs enqueued before jobs had one: the worker's directory
        try:
            if cwd is not None and not os.path.isdir(cwd):
                raise FileNotFoundError(errno.ENOENT, "no such directory", cwd)
            proc = subprocess.Popen(args, shell=use_shell, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                    stdout=out, stderr=subprocess.STDOUT, **popen_options())
        except OSError as error:
            if cwd is not None and error.filename == cwd:
                result.error = (f"could not start the command in {cwd} on host {self.identity.host}: "
                                f"{'no such directory' if error.errno == errno.ENOENT else error.strerror}")
            else:
                program = "the command" if use_shell else f"the {job.get('shell') or shell} shell"
                result.error = f"could not start {program}: {error.strerror}"
            self._keep_output(job, out, len(header), result)
            return result
        # Fill in the header's pid, without moving the offset the command writes at.
        write_pid(out.fileno(), path, proc.pid, len(header) - PID_FIELD - 1, hasattr(os, "pwrite"))
        with self._lock:
            self.running[job["id"]] = (proc, mark)
        if self.abort.is_set() or job["id"] in self.cancelled:  # asked for while it started
            kill_tree(proc, mark)
        try:
            finished = self._wait(proc, mark, timeout)
        except BaseException:
            kill_tree(proc, mark)  # never leave a command running that nobody watches
            raise
        finally:
            with self._lock:
                self.running.pop(job["id"], None)
                cancelled = job["id"] in self.cancelled
                self.cancelled.discard(job["id"])
        result.exit_code = proc.returncode
        if cancelled and proc.returncode != 0:
            result.kind = "cancelled"
            result.exit_code = None
        elif self.abort.is_set() and proc.returncode != 0:
            result.kind = "interrupted"
            result.exit_code = None
            result.error = self.abort_reason
        elif not finished:
            result.exit_code = None
            result.error = f"timed out after {timeout:g} s; the command's process tree was killed"
        elif proc.returncode == 127:
            result.error = "command not found (exit code 127)"
        elif proc.returncode != 0:
            result.error = f"exit code {proc.returncode}"
        result.duration = time.monotonic() - clock
        end = self._keep_output(job, out, len(header), result)
        killed = not finished or result.kind != "ran"  # SIGKILL reached its whole group: none will write again
        if not killed and children_left(proc.pid):
            self._retire(job, out, end)
        return result

    def _keep_output(self, job: dict[str, Any], out: Any, start: int, result: Outcome) -> int:
        """Append the attempt to the job's log (unless it succeeded silently) and keep its tail.
        Returns where its output ended in the scratch file. Never raises: output that cannot be
        kept (logs/ unwritable, a full disk) is a warning on the outcome, never its result."""
        end = os.fstat(out.fileno()).st_size
        if end > start:
            out.seek(max(start, end - OUTPUT_TAIL_BYTES))
            result.output_tail = out.read(end - out.tell()).decode("utf-8", errors="replace")
        if end == start and result.kind == "ran" and result.error is None:
            return end
        if result.kind == "interrupted":
            ending = "interrupted by Ctrl+C; not counted as an attempt"
        else:
            ending = "cancelled" if result.kind == "cancelled" else (result.error or "exit code 0")
        try:
            out.seek(0)
            self.store.keep_output(job["id"], job["attempts"], self.identity, out.readline(LOG_LINE_MAX), out,
                                   start, end, ending, counted=result.kind != "interrupted")
        except Exception as error:  # whatever went wrong with the log, the command's result stands
            reason = str(error)
            if isinstance(error, OSError) and error.strerror:
                reason = f"{error.strerror}: {error.filename or self.store.log_location(job['id'])}"
            result.warning = f"its output could not be kept: {reason}"
        return end

    def _retire(self, job: dict[str, Any], handle: Any, end: int) -> None:
        """Processes the command left behind still hold the scratch file: hand it to the store
        as the attempt's late output; later jobs use other scratch files."""
        with self._lock:
            self._held.pop((job["id"], job["attempts"]), None)
        self.store.keep_late_output(job["id"], job["attempts"], handle, end)

    def close(self, remove_files: bool = True) -> None:
        """At exit: close this process's scratch files, and remove them unless recovery will need them."""
        with self._lock:
            handles = self._free + [handle for _, handle in self._held.values()]
            self._free, self._held = [], {}
            running = bool(self.running)
        self.guardian.close(running)
        for handle in handles:
            handle.close()
            if remove_files:
                self.store.remove_scratch(handle)

    def _wait(self, proc: subprocess.Popen, mark: str, timeout: float | None) -> bool:
        """Wait for the command; False when the timeout killed its tree."""
        import subprocess

        if not timeout:
            proc.wait()
            return True
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            kill_tree(proc, mark)
            proc.wait()
            return False

    def running_attempts(self) -> list[tuple[str, int]]:
        """(job id, attempt) of every command running now."""
        with self._lock:
            return [(job_id, int(mark.split("@", 1)[0].rsplit("#", 1)[1]))
                    for job_id, (_, mark) in self.running.items()]

    def cancel(self, job_id: str) -> None:
        """`queuectl cancel`: kill this job's command tree, now or as it starts."""
        with self._lock:
            self.cancelled.add(job_id)
            running = self.running.get(job_id)
        if running is not None:
            kill_tree(*running)

    def kill_all(self, reason: str | None = None) -> None:
        """Second Ctrl+C (or a lease about to be lost): kill every running command's process tree."""
        self.abort_reason = reason
        self.abort.set()
        with self._lock:
            procs = list(self.running.values())
        for proc, mark in procs:
            kill_tree(proc, mark)


def write_pid(fd: int, path: str, pid: int, offset: int, has_pwrite: bool) -> None:
    """Write a command's pid into its attempt header: pwrite on POSIX; on Windows
    (no pwrite) through a second handle, whose own offset leaves the shared one alone."""
    data = f"{pid:<{PID_FIELD}}".encode()
    if has_pwrite:
        os.pwrite(fd, data, offset)
        return
    second = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
    try:
        os.lseek(second, offset, os.SEEK_SET)
        os.write(second, data)
    finally:
        os.close(second)


# --------------------------------------------------------------------------
# 9. The worker: thread pool, rounds, heartbeat, stop, signals
# --------------------------------------------------------------------------


# What a terminal would act on rather than show: C0 and C1 controls (ESC starts
# the sequences that retitle a window, rewrite the screen or set the clipboard)
# and the marks that reorder text (bidirectional overrides).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str, terminal: bool = True) -> str:
    """Text from a job (its command, its output) as it may be printed to a
    terminal: controls shown as escapes (\\x1b), so none reaches it raw."""
    if not terminal:
        return text
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                         else f"\\u{ord(m.group()):04x}", text)


def brief(command: str, limit: int = 200) -> str:
    """A command as one console line shows it: its start, when it is long."""
    command = command.replace("\n", " ")
    return command if len(command) <= limit else command[:limit - 3] + "..."


class Printer:
    """One line per call, under a lock, so parallel jobs stay readable: messages to
    stdout, errors to stderr. A worker outlives its terminal (window closed: EIO; pipe
    reader gone: EPIPE): such a stream is pointed at the null device from then on."""

    def __init__(self, stream: Any = None, errors: Any = None) -> None:
        self.stream = stream
        self.errors = errors
        self._lock = threading.Lock()

    def __call__(self, text: str) -> None:
        self._write(self.stream or sys.stdout, text)

    def error(self, text: str) -> None:
        self._write(self.errors or sys.stderr, text)

    def _write(self, stream: Any, text: str) -> None:

        with self._lock:
            try:
                if stream.isatty():
                    text = escape_controls(text)
                stream.write(text if text.endswith("\n") else text + "\n")
            except OSError as error:
                if error.errno in (errno.EIO, errno.EPIPE):
                    _to_null_device(stream)
            except ValueError:
                pass


def _to_null_device(stream: Any) -> None:
    """Point a stream's file descriptor at the null device, so its unwritten text (and the
    flush at exit) goes nowhere instead of failing for ever."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(fd, stream.fileno())
        finally:
            os.close(fd)
    except (OSError, ValueError):
        pass


PAUSED_BURST = "The queue is paused: this worker starts no new job (`queuectl resume` goes on)."
# A worker claims jobs ahead of its threads only while jobs are this short, so
# a second worker process is never kept waiting behind more than this much work.
PREFETCH_WORK_S = 0.2
SHORT_JOB_S = 0.02  # below this a thread goes on before its last result is recorded (batched)
PREFETCH_MAX_PER_THREAD = 64


class WorkerPool:
    """N threads in one process. Threads only run commands; the main thread
    does the bookkeeping in locked rounds (record finished jobs, recover dead
    workers' jobs, claim), so one file write serves many jobs."""

    def __init__(self, store: BaseStore, count: int, burst: bool, say: Printer) -> None:
        self.store = store
        self.count = count
        self.burst = burst
        self.say = say
        self.identity = WorkerIdentity()
        store.begin_worker(self.identity)
        self.runner = Runner(store, self.identity)
        self.lock = threading.Lock()
        self.work_ready = threading.Condition(self.lock)
        self.result_ready = threading.Condition(self.lock)
        self.backlog: list[dict[str, Any]] = []  # claimed, not started (oldest last)
        self.results: list[Outcome] = []
        self.running = 0
        self.closing = False
        self.stopping = False
        self.interrupts = 0
        self.mean_duration: float | None = None
        self.measured = 0  # how many durations mean_duration is made of
        self.unrecorded: set[tuple[str, int]] = set()
        self.last_pickup = time.monotonic()
        self.job_timeout = float(store.config()["job_timeout"])
        self.shell = store.config()["shell"]
        self.started_at = now_ts()
        self.heartbeat_stop = threading.Event()
        self.totals = {"completed": 0, "failed": 0, "dead": 0, "cancelled": 0}
        self.cancels_seen: set[str] = set()
        self.stop_cause: int | str | None = None  # the signal, or "worker stop": announced once
        self.paused = False  # `queuectl pause`: claim nothing (as the last look at the store saw it)
        self.stop_said = self.kill_said = False
        self.fault: str | None = None  # why this worker cannot work now: it claims nothing meanwhile
        self.fault_said_at: float | None = None
        self.next_probe = 0.0
        self.home_lost = False  # the data folder was deleted or replaced: nothing can be recorded
        self.gave_up = False  # results could not be recorded in time: recovery will settle them
        self.failed = False  # exit 1: the worker stopped because of a fault
        self.last_beat = time.monotonic()  # when the last heartbeat that was written began
        self.lease = float(store.config()["lease_timeout"])
        self._interval = max(0.2, min(1.0, self.lease / 4))  # the heartbeat's, as last read

    # -- lifecycle ----------------------------------------------------------

    def run(self) -> int:
        self.store.check()  # a damaged file fails before any job starts
        if self.burst and self.store.paused_since() is not None:
            self.say(PAUSED_BURST)
            return 0
        self.store.on_change(self._wake)
        self.runner.guardian.start()
        self._heartbeat_once()
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._lease_watch, name="lease watch", daemon=True).start()
        threads = []
        for index in range(self.count):
            thread = threading.Thread(target=self._thread_main, args=(f"Worker-{index + 1}",),
                                      name=f"Worker-{index + 1}", daemon=True)
            thread.start()
            threads.append(thread)
            self.say(f"Worker-{index + 1} started.")
        self.say(f"Started {self.count} worker(s).")
        previous = self._install_signals()
        finished = False
        try:
            self._main_loop()
            finished = True
        finally:
            if not finished:
                self.runner.kill_all()  # never leave a command running without its worker
            with self.lock:
                self.closing = True
                self.work_ready.notify_all()
            for thread in threads:
                thread.join(timeout=5)
            settled = self._flush_leftovers()
            self.heartbeat_stop.set()
            self._restore_signals(previous)
            # Unsettled jobs keep this worker's files, so recovery finds them as a dead worker's.
            self.runner.close(remove_files=settled)
            _quietly(self._clear_stop_flag_if_last)
            if finished and self.failed:
                self.say("Workers stopped because of the error above.")
            elif finished:
                self.say("Workers stopped; interrupted jobs were returned to pending." if self.interrupts >= 2
                         else "All workers stopped gracefully.")
            t = self.totals
            self.say(f"Summary: {t['completed']} completed, {t['failed']} failed attempt(s), {t['dead']} dead, "
                     f"{t['cancelled']} cancelled in {now_ts() - self.started_at:.1f} s.")
            if settled:  # last: `worker stop --wait` waits for this file to go (and the pid to end)
                _quietly(lambda: self.store.forget_worker(self.identity.host, self.identity.pid))
        return 130 if self.interrupts >= 2 else 1 if self.failed else 0

    def _main_loop(self) -> None:
        poll = float(self.store.config()["poll_interval"])
        last_recover = last_round = next_flag_check = 0.0
        last_complaint = -math.inf
        failing_since: float | None = None
        while True:
            clock = time.monotonic()
            if clock >= next_flag_check:
                next_flag_check = clock + 0.1
                if self._stop_flag_seen():
                    self.stop_cause = self.stop_cause or "worker stop"
                    self.stopping = True
                self._look_for_pause()
                self._check_home()
            self._announce_stop()
            if self.fault:
                self._handle_fault(clock)
            if (self.stopping or self.fault or self.paused) and self.backlog:
                self._release_backlog()
            if self.home_lost:
                self._drop_results()
            with self.lock:
                waiting_results = len(self.results)
                backlog = len(self.backlog)
                busy = self.running
                held = busy + backlog
            target = self._target()
            ahead = target - self.count  # how many jobs this process claims beyond its threads
            want = 0 if self.stopping or self.fault or self.paused else target - held
            # Refill when the jobs claimed ahead run low (at once when none are).
            low = want > 0 and backlog <= ahead // 2
            due = self.store.next_due()
            fetch = low and ((due is not None and due <= now_ts()) or self.store.changed())
            # Results wait for the next claim, for 50 ms, or until every thread is idle.
            record = waiting_results and (fetch or held == 0 or self.stopping or clock - last_round >= 0.05
                                          or not self._short_jobs())
            recover = clock - last_recover >= 1.0
            claimed: list[dict[str, Any]] = []
            if backlog and busy == self.count and clock - self.last_pickup > 2 * PREFETCH_WORK_S:
                self._release_backlog()  # every thread is busy with a long job: let other workers take these
            if (fetch or record or recover) and not self.home_lost:
                with self.lock:
                    outcomes, self.results = self.results, []
                last_round = clock
                if recover:
                    last_recover = clock
                self._learn(outcomes)
                try:
                    recorded, claimed, cancels = self._checkpoint(outcomes, want, recover)
                    self._settled(outcomes)
                    self._cancel(cancels)
                    self.job_timeout = float(self.store.config()["job_timeout"])
                    self.shell = self.store.config()["shell"]
                    self.lease = float(self.store.config()["lease_timeout"])
                    failing_since = None
                except QueueError as error:
                    # A lock held too long, a file edited by hand, a full disk: keep the
                    # results, say so, and try again (Ctrl+C still stops the worker). A
                    # burst worker stops claiming instead, and exits 1 once its jobs end.
                    with self.lock:
                        self.results[:0] = outcomes
                    failing_since = failing_since or clock
                    if self.burst and not self.failed:
                        self.failed = self.stopping = True
                        self.say.error(f"error: {error} This worker claims no more jobs and exits once its "
                                       "running jobs end.")
                        last_complaint = clock
                    elif clock - last_complaint >= 60:
                        self.say.error(f"error: {error} (retrying)")
                        last_complaint = clock
                    if self.stopping and self.running == 0 and (not self.results or clock - failing_since > 10):
                        self.failed = self.gave_up = True  # what is left is settled by recovery
                        return
                    with self.lock:
                        self.result_ready.wait(1.0)
                    continue
                self._report(recorded, outcomes)
                if claimed:
                    with self.lock:
                        self.backlog[:0] = reversed(claimed)
                        self.work_ready.notify(len(claimed))
            if self._all_idle() and self.burst and self.paused and not self.stopping:
                self.say(PAUSED_BURST)
                return
            if self._all_idle() and (self.stopping or (
                    self.burst and not claimed and not self._due_or_retrying())):
                return
            if fetch and claimed and len(claimed) == want:
                continue  # there may be more due jobs: claim again at once
            self._wait_for_work(poll, last_round)

    def _checkpoint(self, outcomes: list[Outcome], want: int, recover: bool = False) -> tuple[Any, Any, Any]:
        """The store's round, with a file system error it did not foresee as one sentence too."""
        try:
            return self.store.worker_round(outcomes, want, self.identity, recover, self.runner.running_attempts())
        except OSError as error:
            where = f" {error.filename}" if error.filename else ""
            raise QueueError(f"cannot use{where}: {error.strerror or error}.") from None

    def _check_home(self) -> None:
        """A data folder deleted (or replaced) under a running worker can take no result: stop."""
        lost = None if self.home_lost else self.store.lost()
        if lost:
            self.home_lost = self.failed = self.stopping = True
            self.heartbeat_stop.set()  # a heartbeat would re-create workers/ in a replacing folder
            self.fault = lost
            self.fault_said_at = None

    def _fault_found(self, text: str) -> None:
        """Any thread: the worker cannot write its files (the first reason found is kept)."""
        if self.fault is None:
            self.fault = text
            self.fault_said_at = None

    def _handle_fault(self, clock: float) -> None:
        """Say why the worker cannot work. A burst worker (or one whose folder vanished) stops;
        a long-running one retries every second and claims again once its files can be written."""
        if self.burst or self.home_lost:
            if self.fault_said_at is None:
                lost = " (their results cannot be recorded)" if self.home_lost else ""
                self.say.error(f"error: {self.fault}; this worker claims no more jobs and exits once its "
                               f"running jobs end{lost}.")
                self.fault_said_at = clock
            self.failed = self.stopping = True
            return
        if self.fault_said_at is None or clock - self.fault_said_at >= 60:
            self.say.error(f"error: {self.fault}; this worker claims no jobs until it can (it tries again "
                           "every second).")
            self.fault_said_at = clock
        if clock >= self.next_probe:
            self.next_probe = clock + 1.0
            try:
                self._heartbeat_once()
                if self.last_beat < clock:  # not written
                    return
                self.runner.check_scratch()
            except WorkerFault:
                return
            self.fault = None
            self.say.error("The worker can record its work again: claiming jobs.")

    def _wake(self) -> None:
        """The store heard of a change: the main loop looks at once instead of at its next poll."""
        with self.lock:
            self.result_ready.notify_all()

    def _lease_watch(self) -> None:
        """A thread of its own, which never waits on the store: without a heartbeat for nearly a
        lease (the store failing, or a call to it hanging on a cut connection), other workers are
        about to take this one's jobs for a dead worker's and run them again. Kill its commands
        first, and stop: a job never runs twice at once, short of a frozen machine."""
        tick = grace = time.monotonic()
        while not self.heartbeat_stop.wait(0.1):
            clock = time.monotonic()
            if clock - tick > 1.0:  # the whole process was stopped (SIGSTOP, a paused VM), not only its
                grace = clock + 2 * self._interval  # heartbeat: it beats again at once, and the next round
            tick = clock  # says which jobs were taken over meanwhile, and stops just those
            silent = clock - self.last_beat
            if clock < grace or self.runner.abort.is_set() or self.running == 0 or \
                    silent < self.lease - 2 * self._interval:
                continue
            self.failed = self.stopping = True
            self.runner.kill_all(f"killed: its worker could not renew its heartbeat for {silent:.0f} s")
            reason = self.fault or "the heartbeat did not get through"
            self.say.error(f"error: {reason}, for {silent:.0f} s now: other workers are about to take its jobs "
                           "over, so it killed its running commands (their jobs go back to pending) "
                           "and stops.")

    def _drop_results(self) -> None:
        """With the data folder gone, results have nowhere to go: say which, and let the threads go on."""
        with self.lock:
            lost, self.results = self.results, []
        for outcome in lost:
            if outcome.kind != "released":
                self.say.error(f"error: {outcome.worker or 'Worker'} could not record {outcome.job_id}: "
                               "its data folder is gone.")
        self._settled(lost)

    def _announce_stop(self) -> None:
        """Say at once that a stop was asked for: the running jobs may take hours."""
        if self.interrupts >= 2 and not self.kill_said:
            self.kill_said = self.stop_said = True
            self.say.error("Ctrl+C again: killing the running commands; their jobs go back to pending.")
        if self.stop_said or self.stop_cause is None:
            return
        import signal

        self.stop_said = True
        cause = self.stop_cause
        if isinstance(cause, int):
            cause = "Ctrl+C" if cause == signal.SIGINT else signal.Signals(cause).name
        with self.lock:
            running = self.running
        if not running:
            self.say.error(f"{cause}: stopping.")
            return
        jobs = f"{running} running job{'s' if running != 1 else ''}"
        again = f" (press Ctrl+C again to kill {'it' if running == 1 else 'them'})" if cause == "Ctrl+C" else ""
        self.say.error(f"{cause}: finishing the {jobs}, then stopping{again}.")

    def _wait_for_work(self, poll: float, last_round: float) -> None:
        """Sleep until a thread reports, a job falls due, or the next poll."""
        due = None if self.paused else self.store.next_due()
        timeout = poll
        if due is not None and due > 0:
            timeout = max(0.01, min(poll, due - now_ts()))
        with self.lock:
            if self.results:
                timeout = min(timeout, max(0.0, last_round + 0.05 - time.monotonic()))
            if timeout > 0:
                self.result_ready.wait(timeout=min(timeout, 0.2))

    def _short_jobs(self) -> bool:
        """Are jobs so short that recording each result at once would cost more than the jobs?"""
        return self.mean_duration is not None and self.measured >= 5 and self.mean_duration < SHORT_JOB_S

    def _settled(self, outcomes: list[Outcome]) -> None:
        """These results are recorded: their scratch files are free, their threads may go on."""
        self.runner.settled(outcomes)
        with self.lock:
            for outcome in outcomes:
                self.unrecorded.discard((outcome.job_id, outcome.attempt))
            self.work_ready.notify_all()

    def _cancel(self, ids: list[str]) -> None:
        """Stop the jobs `queuectl cancel` asked for: kill a running command's tree;
        a job claimed ahead goes back unstarted, and is recorded as cancelled."""
        ids = [job_id for job_id in ids if job_id not in self.cancels_seen]
        if not ids:
            return
        self.cancels_seen.update(ids)
        with self.lock:
            waiting = [job for job in self.backlog if job["id"] in ids]
            self.backlog = [job for job in self.backlog if job["id"] not in ids]
            self.results += [Outcome(job["id"], job["attempts"], "released") for job in waiting]
            self.result_ready.notify()
        for job_id in set(ids) - {job["id"] for job in waiting}:
            self.runner.cancel(job_id)

    def _release_backlog(self) -> None:
        with self.lock:
            self.results += [Outcome(job["id"], job["attempts"], "released") for job in self.backlog]
            self.backlog = []
        self.mean_duration, self.measured = None, 0  # claim ahead again only once jobs are short again

    def _target(self) -> int:
        """Jobs to hold (running + claimed ahead): one per thread, more for very short jobs."""
        if self.mean_duration is None or self.mean_duration >= PREFETCH_WORK_S:
            return self.count
        ahead = min(PREFETCH_MAX_PER_THREAD, int(PREFETCH_WORK_S / max(self.mean_duration, 1e-4)))
        return self.count * (1 + ahead)

    def _learn(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.duration is not None:
                # The plain mean of the first few jobs, then a moving one: one job that happened
                # to be quick must not make a worker hold results back for jobs that are not.
                weight = max(0.2, 1 / (self.measured + 1))
                previous = self.mean_duration or 0.0
                self.mean_duration = (1 - weight) * previous + weight * outcome.duration
                self.measured += 1

    def _all_idle(self) -> bool:
        """No thread is running a job and no result waits to be recorded."""
        with self.lock:
            return not self.results and not self.backlog and self.running == 0

    def _due_or_retrying(self) -> bool:
        """Burst mode keeps going while a job is due now or a failed job awaits its retry."""
        due = self.store.next_due()
        return (due is not None and due <= now_ts()) or self.store.has_retries_waiting()

    def _flush_leftovers(self) -> bool:
        """At exit, record whatever is left (released or finished jobs). False if that failed."""
        with self.lock:
            outcomes = self.results + [Outcome(job["id"], job["attempts"], "released") for job in self.backlog]
            self.results, self.backlog = [], []
            unfinished = self.running
        if outcomes and (self.home_lost or self.gave_up):
            return False
        if outcomes:
            try:
                recorded, _, _ = self._checkpoint(outcomes, 0)
                self._settled(outcomes)
                self._report(recorded, outcomes)
            except QueueError as error:
                self.say.error(f"error: {error}")
                return False
        return unfinished == 0

    def _thread_main(self, name: str) -> None:
        while True:
            with self.lock:
                while not self.closing and (self.stopping or self.fault or not self.backlog):
                    self.work_ready.wait(0.2 if self.stopping or self.fault else None)
                if self.closing:
                    return
                job = self.backlog.pop()
                self.running += 1
                self.last_pickup = time.monotonic()
            timeout = job.get("timeout") or self.job_timeout or None
            try:
                outcome = self.runner.run(job, name, timeout, self.shell, starting=lambda job=job: self.say(
                    f"{name} executing: {brief(job['command'])} (attempt {job['attempts']})"))
            except WorkerFault as fault:  # the job never started: it goes back, its attempt not counted
                self._fault_found(str(fault))
                outcome = Outcome(job["id"], job["attempts"], "released")
            except Exception as error:  # never lose the job because of a bug here
                outcome = Outcome(job["id"], job["attempts"], error=f"worker error: {error}", worker=name,
                                  started=now_ts())
            if outcome.output_tail:
                self.say(outcome.output_tail.rstrip("\n"))
            with self.lock:
                self.results.append(outcome)
                self.running -= 1
                self.result_ready.notify()
                if not self._short_jobs():
                    # Start the next job only once this result is on disk: a crash then makes at
                    # most one job per thread run again (for very short jobs, the last ~50 ms too).
                    key = (outcome.job_id, outcome.attempt)
                    self.unrecorded.add(key)
                    while key in self.unrecorded and not self.closing:
                        self.work_ready.wait()

    def _report(self, recorded: list[tuple[dict[str, Any], str]], outcomes: list[Outcome]) -> None:
        threads = {outcome.job_id: outcome.worker for outcome in outcomes if outcome.worker}
        for job, what in recorded:
            name = threads.get(job["id"]) or job.get("worker") or "Worker"
            if job.get("warning") and what in ("completed", "failed", "dead", "cancelled"):
                self.say(f"{name} warning: {job['id']}: {job['warning']}")
            if what == "completed":
                self.totals["completed"] += 1
                self.say(f"{name} finished: {job['id']}")
            elif what == "failed":
                self.totals["failed"] += 1
                wait = max(0.0, _epoch(job["run_at"]) - now_ts())
                self.say(f"{name} failed: {job['id']} ({job['error']}); attempt {job['attempts']} of "
                         f"{max(1, job['max_retries'])}, retrying in {wait:.0f} s")
            elif what == "dead":
                self.totals["failed"] += 1
                self.totals["dead"] += 1
                self.say(f"{name} failed: {job['id']} ({job['error']}); moved to the DLQ after "
                         f"{job['attempts']} attempt(s)")
            elif what == "cancelled":
                self.totals["cancelled"] += 1
                self.say(f"{name} cancelled: {job['id']}")
            elif what == "interrupted":
                self.say(f"{name} interrupted: {job['id']} returned to pending")
            elif what == "recovered":
                self.say(f"Recovered job {job['id']} from a dead worker: now {job['state']}")

    # -- heartbeat and stop -------------------------------------------------

    def _heartbeat_info(self) -> dict[str, Any]:
        return {"pid": self.identity.pid, "host": self.identity.host, "threads": self.count,
                "started_at": iso(self.started_at), "heartbeat_at": iso(now_ts()), "home": self.store.location}

    def _heartbeat_once(self) -> None:
        began = time.monotonic()
        try:
            self.store.heartbeat(self._heartbeat_info())
            self.last_beat = began
        except OSError as error:  # others would take this worker for dead: claim nothing meanwhile
            self._fault_found(f"this worker cannot write its heartbeat {error.filename}: {error.strerror}")

    def _heartbeat_loop(self) -> None:
        while not self.heartbeat_stop.wait(self._heartbeat_interval()):
            self._heartbeat_once()
            try:
                self.store.cap_late_output(int(self.store.config()["log_max_bytes"]))
            except (OSError, QueueError):
                pass  # tried again at the next beat

    def _heartbeat_interval(self) -> float:
        """A quarter of the lease, at most a second (a database store streams output with it), re-read every
        beat so a shorter lease applies at once."""
        try:
            self._interval = max(0.2, min(1.0, float(self.store.config()["lease_timeout"]) / 4))
        except QueueError:
            pass
        return self._interval

    def _look_for_pause(self) -> None:
        try:
            self.paused = self.store.paused_since() is not None
        except QueueError:  # a store that cannot answer now: the next round says why
            pass

    def _stop_flag_seen(self) -> bool:
        try:
            requested = self.store.stop_requested_at()
        except QueueError:  # a store that cannot answer asked for nothing: the next round says why, and retries
            return False
        return requested is not None and requested >= self.started_at - 0.001

    def _clear_stop_flag_if_last(self) -> None:
        others = [w for w in self.store.workers() if w["alive"] and w["pid"] != self.identity.pid]
        requested = self.store.stop_requested_at()
        if requested is not None and not any(_epoch(w["started_at"]) <= requested for w in others):
            self.store.clear_stop()

    def _install_signals(self) -> dict[int, Any]:
        import signal

        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK"):  # SIGHUP: its terminal was closed
            number = getattr(signal, name, None)
            if number is not None:
                try:
                    previous[number] = signal.signal(number, self._on_signal)
                except (OSError, ValueError):
                    pass
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        import signal

        for number, handler in previous.items():
            try:
                signal.signal(number, handler)
            except (OSError, ValueError):
                pass

    def _on_signal(self, number: int, frame: Any) -> None:
        # Only set flags here: printing from a handler can raise a reentrancy error.
        if number == 2:  # SIGINT on every platform
            self.interrupts += 1
        self.stop_cause = self.stop_cause or number
        self.stopping = True
        if self.interrupts >= 2:
            self.runner.kill_all()


# --------------------------------------------------------------------------
# 10. The command line: one function per subcommand
# --------------------------------------------------------------------------


def queue_location(args: argparse.Namespace) -> str:
    """Where the queue lives: --home, else QUEUECTL_HOME, else the current folder."""
    return args.home or os.environ.get("QUEUECTL_HOME") or os.getcwd()


# URL schemes and the store that opens a queue at such a URL ("module:class", imported only then).
STORES = {"postgresql": "queuectl_pg:PostgresStore", "postgres": "queuectl_pg:PostgresStore"}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def open_store(location: str) -> BaseStore:
    """The store of a queue: a folder (any path), or a URL whose scheme names a store in STORES."""
    scheme = _SCHEME.match(location)
    if scheme is None:
        if os.path.exists(location) and not os.path.isdir(location):
            raise StoreUnavailable(f"the data folder {location} is a file, not a folder.")
        return FolderStore(location)
    name = scheme.group(1).lower()
    if name not in STORES:
        known = ", ".join(f"{key}://" for key in STORES)
        raise StoreUnavailable(f"{redact(location)}: no queuectl store for {name}:// addresses; a queue lives in a "
                               f"folder (a path) or at {known}.")
    module_name, _, class_name = STORES[name].partition(":")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # not installed, or broken: one sentence either way
        raise StoreUnavailable(f"a queue at a {name}:// address needs the {module_name} module, which this "
                               f"installation cannot import ({error}).") from None
    return getattr(module, class_name)(location)


def normalize_state(text: str) -> str:
    state = STATE_SYNONYMS.get(text.lower(), text.lower())
    if state not in STATES:
        raise argparse.ArgumentTypeError(
            f"unknown state {text!r}; valid states: {', '.join(STATES)} (or processed, dlq)")
    return state


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def flush_notes(store: BaseStore) -> None:
    for warning in store.notes:
        print(warning, file=sys.stderr)
    store.notes.clear()


# -- enqueue --------------------------------------------------------------


def read_input_file(path: str) -> tuple[str, str]:
    if path == "-":
        return decode_input(sys.stdin.buffer.read(), "standard input"), "standard input"
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise QueueError(f"cannot read {path}: {error.strerror}.") from None
    return decode_input(data, path), path


def cmd_enqueue(args: argparse.Namespace, store: BaseStore) -> int:
    notes: list[str] = []  # what a repair of shell-mangled JSON did
    try:
        code = _enqueue(args, store, notes)
    except QueueError as error:
        if notes:  # one line still: the error, and how the shell's quoting was read
            raise QueueError(f"{error} ({notes[0][len('note: '):]})") from None
        raise
    for note in notes:
        print(note, file=sys.stderr)
    return code


def env_pairs(pairs: list[str]) -> dict[str, str]:
    """--env NAME=VALUE options as a dict (the names are checked with the job)."""
    env = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals:
            raise QueueError(f"--env takes NAME=VALUE, not {pair!r}.")
        env[name] = value
    return env


def _enqueue(args: argparse.Namespace, store: BaseStore, notes: list[str]) -> int:
    sources = [s for s in (args.job, args.json, args.file) if s is not None]
    flags = args.id is not None or args.command is not None
    if args.json is not None and args.job is not None and looks_split(args.json):
        raise QueueError(split_json_message([args.json, args.job]), exit_code=2)
    if len(sources) > 1 or (sources and flags and args.command is not None):
        raise QueueError("give the job one way: positional JSON, --json, --file, or --id/--command.")
    if args.file is not None:
        text, source = read_input_file(args.file)
        items = parse_job_documents(text, source)
    elif sources:
        text = sources[0]
        if text == "-":
            text, source = read_input_file("-")
            items = parse_job_documents(text, source)
        else:
            items = parse_json_argument(text, notes.append)
    elif args.command is not None:
        items = [("the job", {"id": args.id, "command": args.command})]
    else:
        raise QueueError('nothing to enqueue; e.g. queuectl enqueue --id job1 --command "echo hi".')
    if args.run_at is not None and args.delay is not None:
        raise QueueError("give run_at (--run-at) or delay (--delay), not both.")
    overrides = {"max_retries": args.max_retries, "priority": args.priority, "run_at": args.run_at,
                 "delay": args.delay, "timeout": args.timeout, "shell": args.shell, "cwd": args.cwd,
                 "after": ",".join(args.after) if args.after else None}
    env = env_pairs(args.env or [])
    if args.id is not None and args.command is None:
        if len(items) != 1:
            raise QueueError("--id can only name a single job.")
        overrides["id"] = args.id
    if not items:
        raise QueueError("the input holds no jobs.")
    try:
        here: str | None = os.getcwd()
        gone = False
    except OSError:  # removed under this shell: only a job that names an absolute cwd can go
        here, gone = None, True
    if here is not None and not utf8_text(here):  # a job's fields are JSON text
        notes.append("note: this directory's name is not UTF-8 text, so the jobs run in their worker's "
                     "directory; give --cwd to choose one.")
        here = None
    config = store.config()
    now = store.clock()  # the queue's time: a database server's, whatever this host's clock says
    jobs = []
    for label, raw in items:
        if isinstance(raw, dict):
            raw = dict(raw)
            for key, value in overrides.items():
                if value is not None:
                    raw[key] = value
                    if key in ("run_at", "delay"):
                        raw.pop("delay" if key == "run_at" else "run_at", None)
            if env:  # --env adds to (and wins over) a JSON job's own env
                raw["env"] = {**raw["env"], **env} if isinstance(raw.get("env"), dict) else env
        job = normalize_job(raw, config, label, now, here)
        if "cwd" not in job and gone:
            raise QueueError(f"{label}: the current directory no longer exists, and a job runs in the "
                             "directory it was enqueued from; cd to one that exists, or give --cwd.")
        too_long = command_too_long(job["command"], job.get("shell") or config["shell"])
        if too_long:
            raise QueueError(f"{label}: {too_long}")
        jobs.append(job)
    store.enqueue(jobs)
    for job in jobs:
        print(f"Enqueued job: {job['id']}")
    return 0


# -- worker ---------------------------------------------------------------


def cmd_worker_start(args: argparse.Namespace, store: BaseStore) -> int:
    if args.count < 1 or args.count > 256:
        raise QueueError("--count must be between 1 and 256.")
    return WorkerPool(store, args.count, args.burst, Printer()).run()


def cmd_worker_stop(args: argparse.Namespace, store: BaseStore) -> int:
    alive = [w for w in store.workers() if w["alive"]]
    if not alive:
        print("No workers are running.")
        return 0
    store.request_stop()
    print(f"Asked {len(alive)} worker process(es) to stop after their current jobs.")
    if args.wait:
        asked = {(w["host"], w["pid"]) for w in alive}

        def running() -> bool:
            listed = {(w["host"], w["pid"]) for w in store.workers() if w["alive"]}
            return any(key in listed or (key[0] == HOST and pid_alive(key[1])) for key in asked)

        while running():
            time.sleep(0.05)
        print("All workers have stopped.")
    return 0


# -- status, list, show ---------------------------------------------------


def local_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def cmd_pause(args: argparse.Namespace, store: BaseStore) -> int:
    since = store.pause()
    if since is not None:
        print(f"The queue was already paused (since {local_time(since)}).")
    else:
        print("Queue paused: workers start no new job until `queuectl resume` (running jobs finish).")
    return 0


def cmd_resume(args: argparse.Namespace, store: BaseStore) -> int:
    print("Queue resumed: workers start jobs again." if store.resume() else "The queue is not paused.")
    return 0


def status_data(store: BaseStore) -> dict[str, Any]:
    store.recover_orphans()
    counts = store.counts()
    workers = [w for w in store.workers() if w["alive"]]
    paused = store.paused_since()
    return {
        "home": store.location,
        "counts": {state: counts[state] for state in STATES},
        "scheduled": counts["scheduled"],
        "waiting": counts["waiting"],
        "paused": paused is not None,
        "paused_since": None if paused is None else iso(paused),
        "workers": [{k: w.get(k) for k in ("pid", "host", "threads", "started_at", "heartbeat_at")}
                    for w in workers],
    }


def cmd_status(args: argparse.Namespace, store: BaseStore) -> int:
    data = status_data(store)
    if args.json:
        print_json(data)
        return 0
    c = data["counts"]
    workers = data["workers"]
    threads = sum(int(w.get("threads") or 0) for w in workers)
    notes = [f"{data['scheduled']} scheduled"] if data["scheduled"] else []
    notes += [f"{data['waiting']} waiting for other jobs"] if data["waiting"] else []
    scheduled = f"   ({', '.join(notes)})" if notes else ""
    waiting = "   (waiting to retry)" if c["failed"] else ""
    state = (f"Running ({len(workers)} process{'es' if len(workers) != 1 else ''}, "
             f"{threads} thread{'s' if threads != 1 else ''})"
             if workers else "Stopped")
    print(f"Pending Jobs   : {c['pending']}{scheduled}")
    print(f"Processing Jobs: {c['processing']}")
    print(f"Completed Jobs : {c['completed']}")
    print(f"Failed Jobs    : {c['failed']}{waiting}")
    print(f"Dead Jobs (DLQ): {c['dead']}")
    print(f"Cancelled Jobs : {c['cancelled']}")
    print(f"Worker State   : {state}")
    if data["paused"]:
        print(f"Paused         : since {local_time(_epoch(data['paused_since']))}; no new job starts until "
              "`queuectl resume`")
    print(f"{'Queue at' if '://' in data['home'] else 'Data folder':<15}: {data['home']}")
    return 0


def job_time_column(job: dict[str, Any]) -> str:
    if job.get("waiting_for"):
        return "after " + ",".join(job["waiting_for"])
    stamp = job.get("finished_at") if job["state"] in FINISHED_STATES else (
        job.get("started_at") if job["state"] == "processing" else job.get("run_at"))
    if not stamp:
        return "now" if job["state"] == "pending" else "-"
    return local_time(_epoch(stamp))


def format_table(rows: list[list[str]], headers: list[str], width: int) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fixed = sum(widths[:-1]) + 2 * (len(headers) - 1)
    widths[-1] = max(10, min(widths[-1], width - fixed))
    out = []
    for row in [headers] + rows:
        cells = [cell if len(cell) <= w else cell[: w - 3] + "..." for cell, w in zip(row, widths)]
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(out)


def cmd_list(args: argparse.Namespace, store: BaseStore) -> int:
    if args.limit is not None and args.limit < 0:
        raise QueueError("--limit must be 0 or more.")
    jobs = store.jobs(args.state, args.limit)
    if args.json:
        print_json(jobs)
        return 0
    if not jobs:
        hint = ""
        if args.state == "failed" and store.finished_count("dead"):
            hint = " (jobs that used up their attempts are in the DLQ: queuectl list --state dead)"
        print(f"No {args.state + ' ' if args.state else ''}jobs.{hint}")
        return 0
    terminal = sys.stdout.isatty()
    rows = [[j["id"], j["state"], str(j.get("attempts", 0)), str(j.get("priority", 0)),
             job_time_column(j), escape_controls(j["command"].replace("\n", " "), terminal)] for j in jobs]
    width = _terminal_width()
    print(format_table(rows, ["ID", "STATE", "ATTEMPTS", "PRIORITY", "NEXT RUN / FINISHED", "COMMAND"], width))
    return 0


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


def cmd_show(args: argparse.Namespace, store: BaseStore) -> int:
    job = store.get(args.id)
    if job is None:
        raise NoSuchJob(f"no job with id {args.id!r}.")
    if args.json:
        print_json(job)
        return 0
    order = ["id", "state", "command", "cwd", "env", "after", "waiting_for", "attempts", "max_retries", "priority",
             "timeout", "run_at",
             "created_at", "updated_at", "first_started_at", "started_at", "finished_at", "duration",
             "cancel_requested_at", "worker", "pid", "host", "exit_code", "error"]
    keys = [k for k in order if k in job] + [k for k in job if k not in order and k != "output"]
    width = max(len(key) for key in keys)
    terminal = sys.stdout.isatty()
    for key in keys:
        value = job[key]
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
        text = "-" if value is None else text
        print(f"{key:<{width}}: {escape_controls(text, terminal)}")
    print(f"{'log':<{width}}: {store.log_location(job['id'])}")
    if job.get("output"):
        print("output (last part):")
        print(escape_controls(str(job["output"]).rstrip("\n"), terminal))
    return 0


# -- logs -------------------------------------------------------------------


def attempt_title(record: LogRecord) -> str:
    """The line `logs` prints before an attempt's output."""
    # A run a second Ctrl+C interrupted is not counted: the next one has its number.
    name = f"attempt {'?' if record.number is None else record.number}" if record.counted else "uncounted run"
    start = f", started {record.started} by {record.worker}" if record.started else " (its start was cut off)"
    return f"=== {name}{start}: {record.problem or record.ending or 'running'}"


def _print_bytes(handle: Any, start: int, end: int) -> bool:
    """Print bytes start..end of a file, a megabyte at a time; returns whether a line is open."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    handle.seek(start)
    last = b"\n"
    while start < end:
        chunk = handle.read(min(end - start, 1 << 20))
        if not chunk:
            break
        sys.stdout.write(decoder.decode(chunk))
        start += len(chunk)
        last = chunk[-1:]
    sys.stdout.write(decoder.decode(b"", final=True))
    return last != b"\n"


def _tail_start(handle: Any, start: int, end: int, lines: int | None) -> int:
    """Where the last `lines` lines of bytes start..end begin, read backwards from the end."""
    if lines is None:
        return start
    if lines == 0:
        return end
    handle.seek(max(start, end - 1))
    position = end - 1 if end > start and handle.read(1) == b"\n" else end  # a last newline starts no line
    while position > start:
        size = min(1 << 16, position - start)
        position -= size
        handle.seek(position)
        chunk = handle.read(size)
        cut = len(chunk)
        while (cut := chunk.rfind(b"\n", 0, cut)) >= 0:
            lines -= 1
            if lines == 0:
                return position + cut + 1
    return start


def _show_output(handle: Any, start: int, end: int, tail: int | None, limit: int | None = None) -> None:
    if limit is not None and end - start > limit:  # late output is capped when it is shown
        handle.seek(end - limit)
        cut = end - limit + len(handle.readline(min(LOG_LINE_MAX, limit)))
        if tail is None:
            print(f"=== {cut - start} bytes of older output removed (log_max_bytes)")
        start = cut
    start = min(first_data(handle, start), end)  # past a hole that capping late output on disk left
    if _print_bytes(handle, _tail_start(handle, start, end, tail), end):
        print()


def _show_attempt(attempt: Attempt, tail: int | None, limit: int) -> None:
    record = attempt.record
    print(attempt_title(record))
    if record.removed and tail is None:
        print(f"=== {record.removed} bytes of older output removed (log_max_bytes)")
    _show_output(attempt.source, record.output_start, record.output_end, tail)
    if attempt.late:
        handle, start, end = attempt.late
        print(f"=== output written after attempt {record.number} ended, by processes it left running:")
        _show_output(handle, start, end, tail, limit)


def cmd_logs(args: argparse.Namespace, store: BaseStore) -> int:
    if args.tail is not None and args.tail < 0:
        raise QueueError("--tail must be 0 or more.")
    if args.attempt is not None and args.attempt < 1:
        raise QueueError("--attempt must be 1 or more.")
    job = store.get(args.id)
    if job is None:
        raise NoSuchJob(f"no job with id {args.id!r}.")
    if args.attempt is not None and args.attempt > job["attempts"] and not args.follow:
        raise QueueError(f"job {args.id!r} has run {job['attempts']} attempt(s), not {args.attempt}.")
    attempts = store.attempt_logs(args.id)
    if not args.follow:  # what the running attempt printed so far
        current = store.running_attempt(job)
        # Its record may be in the log already, while its result is being recorded: show it once.
        if current and all(a.record.identity() != current.record.identity() for a in attempts):
            attempts.append(current)
    if args.attempt is not None:
        attempts = [a for a in attempts if a.number == args.attempt and a.record.counted]
    limit = _log_limit(store)
    for attempt in attempts:
        _show_attempt(attempt, args.tail, limit)
    if args.follow and job["state"] in ACTIVE_STATES:
        return _follow(args, store, job)
    if not attempts:
        if job["attempts"] == 0:
            print(f"Job {args.id} has not run yet ({job['state']}).")
        elif args.attempt is not None:
            print(f"Attempt {args.attempt} of job {args.id} printed nothing.")
        elif job["state"] == "processing":
            print(f"Job {args.id} is running attempt {job['attempts']} and has printed nothing yet.")
        else:
            print(f"Job {args.id} printed nothing ({job['state']} after {job['attempts']} attempt(s)).")
    return 0


def _log_limit(store: BaseStore) -> int:
    try:
        return int(store.config()["log_max_bytes"])
    except QueueError:
        return DEFAULT_CONFIG["log_max_bytes"]


def _follow(args: argparse.Namespace, store: BaseStore, job: dict[str, Any]) -> int:
    """Stream the output of the job's running attempt until it is no longer processing
    (a pending or failed job is waited for first)."""
    import codecs

    if job["state"] != "processing":
        print(f"Waiting for job {args.id} to start ({job['state']})...", file=sys.stderr)
    before = job["attempts"]
    limit = _log_limit(store)
    while job["state"] != "processing":
        time.sleep(0.2)
        job = store.get(args.id) or job
        if job["state"] not in ACTIVE_STATES or job["attempts"] > before and job["state"] != "processing":
            # It ran (or was cancelled) between two looks: what it printed is in the log now.
            ran = [a for a in store.attempt_logs(args.id) if (a.number or 0) > before and a.record.counted
                   and (args.attempt is None or a.number == args.attempt)]
            for attempt in ran:
                _show_attempt(attempt, args.tail, limit)
            if not ran:
                print(f"Job {args.id} is {job['state']} (attempt {job['attempts']} printed nothing).")
            return 0
    number = job["attempts"]
    if args.attempt is not None and number != args.attempt:
        return 0
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    printed = 0
    newline = True  # whether what was written last ended a line
    running: Attempt | None = None
    titled = False
    last_check = 0.0
    while True:
        if running is None:
            running = store.running_attempt(job)
        if running and not titled:
            record = running.record
            if args.tail is not None:  # as `tail -f` does: from the last lines printed so far
                printed = _tail_start(running.source, record.output_start, record.output_end,
                                      args.tail) - record.output_start
            print(attempt_title(record))
            titled = True
            continue
        chunk = running.more(printed) if running and running.more else None
        if running and chunk is None:
            running = None
        if chunk:
            printed += len(chunk)
            text = decoder.decode(chunk)
            sys.stdout.write(text)
            newline = text.endswith("\n") if text else newline
            continue
        if time.monotonic() - last_check >= 0.2:
            last_check = time.monotonic()
            job = store.get(args.id) or job
            if job["state"] != "processing" or job["attempts"] != number:
                break
        time.sleep(0.05)
    # The attempt is over: the rest of its output, and its end, from the log.
    ended = [a for a in store.attempt_logs(args.id) if a.number == number]
    if not titled:
        ending = job.get("error") or "exit code 0"
        print(attempt_title(ended[-1].record) if ended else f"=== attempt {number}: {ending}")
    if ended:  # the log keeps its output from byte `removed` on; `printed` bytes were shown already
        record, handle = ended[-1].record, ended[-1].source
        position = record.output_start + max(0, printed - record.removed)
        handle.seek(position)
        while position < record.output_end:
            chunk = handle.read(min(record.output_end - position, 1 << 20))
            if not chunk:
                break
            position += len(chunk)
            text = decoder.decode(chunk)
            sys.stdout.write(text)
            newline = text.endswith("\n") if text else newline
    sys.stdout.write(decoder.decode(b"", final=True))
    if not newline:
        print()
    if titled:
        ending = ended[-1].record.ending if ended else (job.get("error") or f"exit code {job.get('exit_code')}")
        print(f"=== attempt {number} ended: {ending}")
    return 0


# -- cancel, purge ----------------------------------------------------------


def cmd_cancel(args: argparse.Namespace, store: BaseStore) -> int:
    results = store.cancel(args.ids)
    failed = False
    for job_id, (what, state) in results.items():
        if what == "unknown":
            print(f"error: no job with id {job_id!r}.", file=sys.stderr)
            failed = True
        elif what == "finished":
            print(f"error: job {job_id!r} has already finished ({state}); nothing to cancel.", file=sys.stderr)
            failed = True
        elif what == "cancelled":
            print(f"Cancelled job: {job_id} (was {state})")
    asked = [job_id for job_id, (what, _) in results.items() if what == "requested"]
    deadline = time.monotonic() + CANCEL_WAIT_S
    while asked:
        states = store.states_of(asked)
        gone = [job_id for job_id in asked if job_id not in states]  # ended, then purged by another command
        states.update(store.ended_since_cancel(gone))
        for job_id in [j for j in asked if states.get(j) != "processing"]:
            asked.remove(job_id)
            purged = " (purged since)" if job_id in gone else ""
            if states.get(job_id) == "cancelled":
                print(f"Cancelled job: {job_id} (was processing; its command was killed){purged}")
            elif states.get(job_id) is None:
                print(f"error: job {job_id!r} ended and was purged by another command before its end "
                      "could be read.", file=sys.stderr)
                failed = True
            else:
                print(f"error: job {job_id!r} finished ({states.get(job_id)}) before it could be cancelled{purged}.",
                      file=sys.stderr)
                failed = True
        if asked and time.monotonic() > deadline:
            for job_id in asked:
                print(f"Cancel requested for job {job_id}: its worker has not confirmed yet; it will stop "
                      "the command at its next check (queuectl show shows when).")
            break
        if asked:
            time.sleep(0.1)
    return 1 if failed else 0


CANCEL_WAIT_S = 10.0  # how long `cancel` waits for a worker to confirm it killed a running job


def cmd_purge(args: argparse.Namespace, store: BaseStore) -> int:
    states = [args.state] if args.state else list(FINISHED_STATES)
    before = store.clock() - args.older_than if args.older_than is not None else None
    planned = store.purge(states, before, apply=False)
    if not sum(planned.values()):
        print("Nothing to purge.")
        return 0
    what = f"{sum(planned.values())} finished job(s) ({_count_by_state(planned)}) and their logs"
    if not args.yes:
        if not sys.stdin.isatty():
            raise QueueError(f"purge would delete {what} for good; run it again with --yes to confirm "
                             "(there is no terminal to ask).")
        try:
            answer = input(f"Delete {what} from {store.location}? [y/N] ").strip().lower()
        except EOFError:  # Ctrl+D: no
            answer = ""
            print()
        if answer not in ("y", "yes"):
            print("Nothing was deleted.")
            return 1
    removed = store.purge(states, before, apply=True)
    print(f"Purged {sum(removed.values())} job(s) ({_count_by_state(removed)}).")
    return 0


def _count_by_state(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {state}" for state, count in counts.items())


def finished_state(text: str) -> str:
    state = normalize_state(text)
    if state not in FINISHED_STATES:
        raise argparse.ArgumentTypeError(f"purge deletes only finished jobs: {', '.join(FINISHED_STATES)}")
    return state


def duration_arg(text: str) -> float:
    try:
        return parse_duration(text, "duration")
    except QueueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# -- stats, wait --------------------------------------------------------------


def percentiles(values: Any, *shares: float) -> list[float | None]:
    """Nearest-rank percentiles (share 0.5 = the median) of an array('d'), None for none."""
    return [_nth(values, max(0, math.ceil(share * len(values)) - 1)) if len(values) else None for share in shares]


def _nth(values: Any, rank: int) -> float:
    """The rank-th smallest number of an array('d'), without a list of them all: count them into
    4,096 slices of their range, keep only the slice that holds that rank, until few are left."""
    from array import array

    while len(values) > 50_000:
        low, high = min(values), max(values)
        if low == high:
            return low
        scale = 4095 / (high - low)
        counts = [0] * 4096
        for value in values:
            counts[int((value - low) * scale)] += 1
        chosen = 0
        while rank >= counts[chosen]:
            rank -= counts[chosen]
            chosen += 1
        values = array("d", (value for value in values if int((value - low) * scale) == chosen))
    return sorted(values)[rank]


def stats_data(store: BaseStore, since: float | None) -> dict[str, Any]:
    """The numbers `stats` shows, in one pass over the finished jobs: what is kept is two
    numbers per job (run time, queue wait) for the percentiles, not the jobs."""
    from array import array

    now = store.clock()
    start = now - since if since is not None else None
    counts = dict.fromkeys(FINISHED_STATES, 0)
    run_times, waits = array("d"), array("d")
    ran = attempts_total = 0
    attempts_max: int | None = None
    first_created = last_finished = None
    for job in store.finished_since(start):
        counts[job["state"]] += 1
        first_start = job.get("first_started_at") or (job.get("attempts") == 1 and job.get("started_at"))
        if job.get("created_at") and first_start:
            waits.append(_epoch(first_start) - _epoch(job["created_at"]))
        if job["state"] not in ("completed", "dead"):
            continue
        ran += 1
        attempts = int(job.get("attempts", 0))
        attempts_total += attempts
        attempts_max = attempts if attempts_max is None else max(attempts_max, attempts)
        if isinstance(job.get("duration"), (int, float)):
            run_times.append(float(job["duration"]))
        elif job.get("started_at"):
            run_times.append(_epoch(job.get("finished_at")) - _epoch(job.get("started_at")))
        if job.get("created_at"):
            created = _epoch(job["created_at"])
            first_created = created if first_created is None else min(first_created, created)
        finished = _epoch(job.get("finished_at"))
        last_finished = finished if last_finished is None else max(last_finished, finished)
    if start is None:  # from the first enqueue of these jobs to the last finish
        start, end = first_created, last_finished
    else:
        end = now
    window = (end - start) if start is not None and end is not None else None
    active = store.active_jobs()
    due = [_epoch(job.get("run_at")) or _epoch(job.get("created_at")) for job in active
           if job["state"] != "processing" and _epoch(job.get("run_at")) <= now]
    run_p50, run_p95 = percentiles(run_times, 0.5, 0.95)
    run_max = max(run_times, default=None)
    del run_times
    wait_p50, wait_p95 = percentiles(waits, 0.5, 0.95)

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(max(0.0, value), 3)

    return {
        "window": {"since": iso(start) if start is not None else None, "until": iso(end) if end else None,
                   "seconds": rounded(window)},
        "finished": counts,
        "success_rate": round(counts["completed"] / ran, 4) if ran else None,
        "attempts": {"mean": round(attempts_total / ran, 3) if ran else None, "max": attempts_max},
        "run_time": {"p50": rounded(run_p50), "p95": rounded(run_p95), "max": rounded(run_max)},
        "queue_wait": {"p50": rounded(wait_p50), "p95": rounded(wait_p95)},
        "throughput_per_minute": round(ran * 60 / window, 3) if window else None,
        "backlog": {**{state: sum(job["state"] == state for job in active) for state in ACTIVE_STATES},
                    "oldest_due_age": rounded(now - min(due)) if due else None},
    }


def cmd_stats(args: argparse.Namespace, store: BaseStore) -> int:
    data = stats_data(store, args.since)

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} s"

    if args.json:
        print_json(data)
        return 0
    f, b = data["finished"], data["backlog"]
    window = data["window"]
    rate = "-" if data["success_rate"] is None else f"{data['success_rate'] * 100:.1f}%"
    print(f"Window         : {window['since'] or '-'} to {window['until'] or '-'}")
    print(f"Finished       : {f['completed']} completed, {f['dead']} dead, {f['cancelled']} cancelled")
    print(f"Success rate   : {rate} (completed / (completed + dead))")
    print(f"Attempts/job   : mean {data['attempts']['mean'] if data['attempts']['mean'] is not None else '-'}, "
          f"max {data['attempts']['max'] if data['attempts']['max'] is not None else '-'}")
    print(f"Run time       : p50 {secs(data['run_time']['p50'])}, p95 {secs(data['run_time']['p95'])}, "
          f"max {secs(data['run_time']['max'])}")
    print(f"Queue wait     : p50 {secs(data['queue_wait']['p50'])}, p95 {secs(data['queue_wait']['p95'])}")
    throughput = data["throughput_per_minute"]
    print(f"Throughput     : {'-' if throughput is None else f'{throughput:g}'} jobs/min")
    print(f"Backlog        : {b['pending']} pending, {b['processing']} processing, {b['failed']} failed; "
          f"oldest due job waiting {secs(b['oldest_due_age'])}")
    return 0


def cmd_wait(args: argparse.Namespace, store: BaseStore) -> int:
    if args.timeout is not None and not 0 <= args.timeout < 1e9:  # (also refuses nan and inf)
        raise QueueError("--timeout must be a number of seconds, 0 or more (leave it out to wait for ever).")
    if args.ids:
        ids = list(dict.fromkeys(args.ids))
        known = store.states_of(ids)
        unknown = [job_id for job_id in ids if job_id not in known]
        if unknown:
            raise NoSuchJob(f"no job with id {unknown[0]!r}.")
    else:
        ids = [job["id"] for job in store.active_jobs()]
        if not ids:
            print("No pending or processing jobs.")
            return 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    pause, next_recover, warned = 0.05, 0.0, False
    started = time.monotonic()
    states: dict[str, str] = {}
    waiting = ids
    while True:
        fresh = store.states_of(waiting)  # a finished job is not looked up again
        states.update({job_id: fresh.get(job_id, "gone") for job_id in waiting})  # (gone: purged meanwhile)
        waiting = [job_id for job_id in waiting if states.get(job_id) in ACTIVE_STATES]
        if not waiting:
            break
        if deadline is not None and time.monotonic() >= deadline:
            left = ", ".join(f"{sum(states.get(j) == s for j in waiting)} {s}" for s in ACTIVE_STATES
                             if any(states.get(j) == s for j in waiting))
            print(f"Timed out after {args.timeout:g} s: {len(waiting)} of {len(ids)} job(s) not finished ({left}).")
            return 124
        if time.monotonic() >= next_recover:  # a dead worker's jobs go back to the queue meanwhile
            next_recover = time.monotonic() + 1.0
            store.recover_orphans()
            if not warned and time.monotonic() - started > 2 and not any(w["alive"] for w in store.workers()):
                print("note: no worker is running on this folder; start one with: queuectl worker start",
                      file=sys.stderr)
                warned = True
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())) if deadline is not None else pause)
        pause = min(0.5, pause * 1.5)
    finished = {state: sum(states.get(job_id) == state for job_id in ids) for state in FINISHED_STATES + ("gone",)}
    if finished["completed"] == len(ids):
        print(f"All {len(ids)} job(s) completed.")
        return 0
    gone = finished.pop("gone")
    print(f"{len(ids)} job(s) finished: " + ", ".join(f"{n} {state}" for state, n in finished.items())
          + (f", {gone} purged before it was seen" if gone else "") + ".")
    return 1


# -- dlq, config ----------------------------------------------------------


def cmd_dlq_list(args: argparse.Namespace, store: BaseStore) -> int:
    args.state, args.limit = "dead", None
    return cmd_list(args, store)


def cmd_dlq_retry(args: argparse.Namespace, store: BaseStore) -> int:
    if args.all == bool(args.ids):
        raise QueueError("give job ids or --all, e.g. queuectl dlq retry job1.")
    requeued = store.dlq_retry(None if args.all else args.ids)
    if not requeued:
        print("The DLQ is empty.")
    for job_id in requeued:
        print(f"Requeued job: {job_id}")
    return 0


def cmd_requeue(args: argparse.Namespace, store: BaseStore) -> int:
    for job_id in store.requeue(args.ids):
        print(f"Requeued job: {job_id}")
    return 0


def cmd_export(args: argparse.Namespace, store: BaseStore) -> int:
    """Every job (or those in --state), one JSON object a line: finished jobs first, in the order
    they finished, then the active ones in queue order. To --file: all of it, or no file."""
    states = set(args.state or STATES)

    def exported() -> Iterator[str]:
        for job in itertools.chain(store.finished_since(None), store.active_jobs()):
            if job["state"] in states:
                yield json.dumps(job, ensure_ascii=False) + "\n"

    if args.file is None:
        for line in exported():
            sys.stdout.write(line)
        return 0
    tmp = f"{args.file}.{os.getpid()}.tmp"
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            for line in exported():
                handle.write(line)
                count += 1
        os.replace(tmp, args.file)
    except OSError as error:
        raise QueueError(f"cannot write {error.filename or args.file}: {error.strerror}.") from None
    finally:
        _quietly(lambda: os.unlink(tmp))
    print(f"Exported {count} job(s) to {args.file}.")
    return 0


def export_lines(path: str, source: str) -> Iterator[tuple[str, Any]]:
    """(label, object) for each line of an export file, read as it goes (UTF-8, or UTF-16 with a
    BOM, as PowerShell 5.1's `>` writes)."""
    import io

    try:
        raw = sys.stdin.buffer if path == "-" else open(path, "rb")
        with raw:
            start = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
            encoding = "utf-16" if start in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
            handle = io.TextIOWrapper(raw, encoding=encoding, newline=None)
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield f"{source} line {number}", json.loads(line)
                    except json.JSONDecodeError as error:
                        raise QueueError(f"{source} line {number}: not JSON ({error.msg}); "
                                         "nothing was imported.") from None
    except UnicodeDecodeError:
        raise QueueError(f"{source} is not UTF-8 or UTF-16 text; nothing was imported.") from None
    except OSError as error:
        raise QueueError(f"cannot read {source}: {error.strerror}.") from None


def cmd_import(args: argparse.Namespace, store: BaseStore) -> int:
    """Jobs as export wrote them, back with their states: every line is checked, and kept checked
    in a temporary file, before the first job is written; then they are written 10,000 at a time.
    A job caught running comes back pending, that attempt not counted."""
    import tempfile

    source = "standard input" if args.source == "-" else args.source
    with tempfile.TemporaryFile(prefix="queuectl-import-") as checked:
        states: dict[str, str] = {}
        named: set[str] = set()
        for label, raw in export_lines(args.source, source):
            try:
                job = restored_job(raw, label)
            except QueueError as error:
                raise QueueError(f"{error} Nothing was imported.") from None
            if job["id"] in states:
                raise QueueError(f"{label}: job {job['id']!r} appears twice; nothing was imported.")
            states[job["id"]] = "pending" if job["state"] == "processing" else job["state"]
            named.update(job.get("after", ()))
            checked.write(json.dumps(job).encode() + b"\n")
        if not states:
            raise QueueError(f"{source} holds no jobs; nothing was imported.")
        taken = store.states_of(list(states))
        if taken:
            job_id, state = next(iter(taken.items()))
            raise JobExists(f"job {job_id!r} already exists ({state}); nothing was imported.")
        outside = sorted(named - set(states))
        found = store.states_of(outside) if outside else {}
        for dep in outside:
            if dep not in found:
                raise QueueError(f"a job waits for {dep!r}, which is neither in the queue nor in {source}; "
                                 "nothing was imported.")
        states.update(found)
        now = store.clock()
        checked.seek(0)
        batch: list[dict[str, Any]] = []
        count = 0
        for line in checked:
            job = json.loads(line)
            if job["state"] == "processing":
                job = requeued(job, now, counted=False)
            if job["state"] in ("pending", "failed") and job.get("after"):
                job = waiting_job(job, states, now)
            batch.append(job)
            if len(batch) == 10_000:
                store.restore(batch)
                count, batch = count + len(batch), []
        if batch:
            store.restore(batch)
            count += len(batch)
    print(f"Imported {count} job(s).")
    return 0


def cmd_config_show(args: argparse.Namespace, store: BaseStore) -> int:
    config = store.config()
    if args.json:
        print_json(config)
        return 0
    for key, value in config.items():
        print(f"{key:<14}= {value}")
    return 0


def cmd_config_get(args: argparse.Namespace, store: BaseStore) -> int:
    value = store.config()[config_key(args.key)]
    print(json.dumps(value) if args.json else value)
    return 0


def cmd_config_set(args: argparse.Namespace, store: BaseStore) -> int:
    key = config_key(args.key)
    value = validate_config_value(key, args.value)
    store.set_config(key, value)
    print(f"{key} = {value}")
    return 0


# -- db -----------------------------------------------------------------------


def cmd_db_status(args: argparse.Namespace, store: BaseStore) -> int:
    versions = store.schema_versions()
    where = store.location
    if versions is None:
        data = {"home": where, "installed": None, "known": None, "pending": []}
        text = f"The queue in {where} is a folder of files: it has no schema, and nothing to migrate."
    else:
        installed, known = versions
        data = {"home": where, "installed": installed, "known": known,
                "pending": list(range((installed or 0) + 1, known + 1))}
        if installed is None:
            text = f"No queuectl schema in {where} yet; the first command that uses the queue creates version {known}."
        elif installed < known:
            text = (f"Schema version {installed} is installed in {where}; this queuectl knows version {known}: "
                    "run `queuectl db migrate`.")
        elif installed > known:
            text = (f"Schema version {installed} is installed in {where}, newer than this queuectl knows "
                    f"({known}): upgrade queuectl.")
        else:
            text = f"Schema version {installed} is installed in {where}: up to date."
    if args.json:
        print_json(data)
    else:
        print(text)
    return 0


def cmd_db_migrate(args: argparse.Namespace, store: BaseStore) -> int:
    versions = store.schema_versions()
    if versions is None:
        print(f"The queue in {store.location} is a folder of files: nothing to migrate.")
        return 0
    statements = store.migrate(dry_run=args.dry_run)
    if args.dry_run:
        for statement in statements:
            print(statement.strip() + "\n")
        if not statements:
            print(f"-- schema version {versions[1]} is installed: nothing to apply")
        return 0
    installed, known = versions
    if statements:
        print(f"Applied schema version(s) {', '.join(map(str, range((installed or 0) + 1, known + 1)))} "
              f"to {store.location}.")
    else:
        print(f"Schema version {known} is installed in {store.location}: nothing to migrate.")
    return 0


# --------------------------------------------------------------------------
# 11. The dashboard
# --------------------------------------------------------------------------


# -- dashboard ----------------------------------------------------------------

DASHBOARD_JOB_LIMIT = 200  # rows a dashboard tab shows (the newest first for finished jobs)
DASHBOARD_MAX_JOBS = 10_000  # the most one /api/jobs call returns: a read of the history holds the lock
DASHBOARD_MAX_MINUTES = 1440  # the longest /api/timeline (a day, one bar a minute)
DASHBOARD_BACKLOG = 256  # connections the kernel keeps waiting while every handler thread is busy
DASHBOARD_THREADS = 128  # requests served at once (bounded memory); a connection beyond waits in the backlog
DASHBOARD_IDLE_TIMEOUT = 10.0  # seconds a connection may stay silent (half a request) before it is closed
# Tests shorten the idle timeout through this variable; it is not a user setting, so no option and no README.
DASHBOARD_TIMEOUT_ENV = "QUEUECTL_DASHBOARD_IDLE_TIMEOUT"
# The query parameters each API path takes: any other is a 400, so a typo is not silently ignored.
DASHBOARD_PARAMETERS = {"status": (), "workers": (), "stats": ("since",), "timeline": ("minutes",),
                        "jobs": ("state", "q", "limit")}
DASHBOARD_FORBIDDEN = (b"Forbidden: open the address that `queuectl dashboard` printed; "
                       b"its token lets this browser in.\n")


class BadQuery(Exception):
    """A query parameter the dashboard's API cannot use; the message is the 400's one sentence."""


def dashboard_jobs(store: BaseStore, state: str | None, query: str, limit: int) -> list[dict[str, Any]]:
    """Jobs for the dashboard: one state (finished ones newest first), filtered by text."""
    needle = query.lower()

    def matches(job: dict[str, Any]) -> bool:
        return (needle in job["id"].lower() or needle in job["command"].lower()
                or needle in str(job.get("error") or "").lower())

    # Read only as far as the page needs: finished jobs from the end of their file.
    return store.jobs(state, limit, where=matches if query else None, newest_first=state in FINISHED_STATES,
                      hint=text_hint(query) if query else None)


def job_detail(store: BaseStore, job_id: str) -> dict[str, Any] | None:
    """One job with the last part of its log (what `show` and `logs` print)."""
    job = store.get(job_id)
    if job is None:
        return None
    attempts = store.attempt_logs(job_id)
    running = store.running_attempt(job)
    if running and all(a.record.identity() != running.record.identity() for a in attempts):
        attempts.append(running)
    return {"job": job, "log": store.log_location(job_id), "log_tail": log_tail(attempts, OUTPUT_TAIL_BYTES * 2)}


def log_tail(attempts: list[Attempt], size: int) -> str:
    """The last `size` bytes of the attempts' output, each after its title line (as `logs` shows them)."""
    pieces: list[bytes] = []
    left = size
    for attempt in reversed(attempts):
        record = attempt.record
        start = max(record.output_start, record.output_end - left)
        attempt.source.seek(start)
        output = attempt.source.read(record.output_end - start)
        if attempt.late:
            handle, late_start, late_end = attempt.late
            handle.seek(max(late_start, late_end - left))
            output += handle.read(late_end - handle.tell())
        pieces.insert(0, (attempt_title(record) + "\n").encode() + output + (b"" if output.endswith(b"\n") else b"\n"))
        left -= len(pieces[0])
        if left <= 0:
            break
    return b"".join(pieces)[-size:].decode("utf-8", "replace")


def timeline(store: BaseStore, minutes: int = 60, now: float | None = None) -> list[dict[str, Any]]:
    """Jobs that finished (completed, dead, cancelled) in each of the last `minutes` minutes, oldest first."""
    now = store.clock() if now is None else now
    start = (now // 60 - minutes + 1) * 60
    buckets = [{"minute": iso(start + 60 * n), **dict.fromkeys(FINISHED_STATES, 0)} for n in range(minutes)]
    for job in store.finished_since(start):
        index = int((_epoch(job.get("finished_at") or job.get("updated_at")) - start) // 60)
        if 0 <= index < minutes:
            buckets[index][job["state"]] += 1
    return buckets


def safe_json(value: Any) -> bytes:
    """JSON that is also safe inside HTML (no <, > or & that a browser could read as markup)."""
    text = json.dumps(value, ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode("utf-8", "replace")  # a folder name that is not UTF-8 shows '?', as on the terminal


def whole_number(name: str, text: str, low: int, high: int) -> int:
    """A query parameter that must be a whole number in [low, high], or a BadQuery saying so."""
    if not re.fullmatch(r"\s*[0-9]{1,9}\s*", text) or not low <= int(text) <= high:
        raise BadQuery(f"{name} must be a whole number from {low} to {high}, not {text[:40]!r}.")
    return int(text)


def api_query(resource: str, query: dict[str, str]) -> dict[str, Any]:
    """GET /api/<resource>'s query parameters, checked and converted (an empty one means its default);
    an unknown or bad one is a BadQuery with one sentence."""
    allowed = DASHBOARD_PARAMETERS[resource]
    values: dict[str, Any] = {}
    for name, text in query.items():
        if name not in allowed:
            takes = "takes " + ", ".join(allowed) if allowed else "takes no parameters"
            raise BadQuery(f"unknown parameter {name[:40]!r}: /api/{resource} {takes}.")
        if text == "":
            continue
        if name == "limit":
            values[name] = whole_number(name, text, 0, DASHBOARD_MAX_JOBS)
        elif name == "minutes":
            values[name] = whole_number(name, text, 1, DASHBOARD_MAX_MINUTES)
        elif name == "state":
            try:
                values[name] = normalize_state(text.strip())
            except argparse.ArgumentTypeError as error:
                raise BadQuery(f"{error}.") from None
        elif name == "since":
            try:
                values[name] = parse_duration(text, "since")
            except QueueError as error:
                raise BadQuery(str(error)) from None
        else:
            values[name] = text  # q: any text
    return values


def dashboard_sign_in_page(target: str, nonce: str) -> bytes:
    """The answer to the URL with the token: it sets the cookie, then goes on to `target` from this same
    page. (A 303 would not do: after a link from another site or file, SameSite=Strict keeps the new
    cookie off the redirected request.) `replace` keeps the token out of the browser's history."""
    import html

    return (f'<!doctype html><meta charset="utf-8"><title>queuectl</title>'
            f'<script nonce="{nonce}">location.replace({safe_json(target).decode()} + location.hash);</script>'
            f'<noscript><meta http-equiv="refresh" content="0; url={html.escape(target)}"></noscript>'
            f'<a href="{html.escape(target)}">Open the dashboard</a>\n').encode("utf-8", "replace")


def make_dashboard_handler() -> type:
    """The request handler class (http.server is imported only by `dashboard`). What it
    serves comes from its server's `queuectl` attribute: store, token, cookie, read_only, hosts.

    Every request must prove it knows the run's token: in a cookie (set from the printed URL's
    ?token=) or an `Authorization: Bearer` header (for scripts); anything else gets a plain 403."""
    import hmac
    import secrets
    from http.server import BaseHTTPRequestHandler
    from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit

    def same_secret(given: str, token: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())

    class DashboardHandler(BaseHTTPRequestHandler):
        server_version = f"queuectl/{__version__}"

        def setup(self) -> None:
            # The socket's timeout: a silent or half-sent request frees its thread after it.
            self.timeout = self.server.queuectl.idle_timeout  # type: ignore[attr-defined]
            super().setup()

        def log_message(self, *args: Any) -> None:
            pass  # quiet: the terminal shows the URL and errors only (and no request's token is logged)

        def _send(self, status: int, body: bytes, kind: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Referrer-Policy", "no-referrer")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: Any) -> None:
            self._send(status, safe_json(value), "application/json; charset=utf-8")

        def _forbid(self, body: bytes = DASHBOARD_FORBIDDEN) -> None:
            self._send(403, body, "text/plain; charset=utf-8")

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self._handle(post=False)

        def do_POST(self) -> None:  # noqa: N802
            self._handle(post=True)

        def _signed_in(self, run: Any) -> bool:
            """The cookie (a browser) or the Authorization header (a script) holds this run's token."""
            bearer = self.headers.get("Authorization", "")
            if bearer.startswith("Bearer ") and same_secret(bearer[7:].strip(), run.token):
                return True
            for header in self.headers.get_all("Cookie") or []:
                for pair in header.split(";"):
                    name, _, value = pair.strip().partition("=")
                    if name == run.cookie and same_secret(value, run.token):
                        return True
            return False

        def _same_origin(self) -> bool:
            """A browser's POST comes from this dashboard's own page, not from another site or port."""
            origin = self.headers.get("Origin")
            if origin is not None and origin != "http://" + self.headers.get("Host", ""):
                return False
            return self.headers.get("Sec-Fetch-Site", "same-origin") == "same-origin"

        def _handle(self, post: bool) -> None:
            run = self.server.queuectl  # type: ignore[attr-defined]
            try:
                if run.hosts is not None and self.headers.get("Host", "") not in run.hosts:
                    # Bound to loopback, it answers only to a loopback name: no DNS rebinding.
                    self._forbid(b"Forbidden: this dashboard answers only to its own address.\n")
                    return
                url = urlsplit(self.path)
                pairs = parse_qsl(url.query, keep_blank_values=True)
                given = [value for name, value in pairs if name == "token"]
                if given:  # the printed URL: swap its token for a cookie, on a GET only
                    if post or not all(same_secret(value, run.token) for value in given):
                        self._forbid()
                        return
                    rest = urlencode([(name, value) for name, value in pairs if name != "token"])
                    target = "/" + url.path.lstrip("/\\") + ("?" + rest if rest else "")  # never //other.host
                    nonce = secrets.token_urlsafe(12)
                    cookie = f"{run.cookie}={run.token}; HttpOnly; SameSite=Strict; Path=/"
                    self._send(200, dashboard_sign_in_page(target, nonce), "text/html; charset=utf-8",
                               {"Set-Cookie": cookie, "Content-Security-Policy":
                                f"default-src 'none'; script-src 'nonce-{nonce}'; base-uri 'none'"})
                    return
                if not self._signed_in(run) or (post and not self._same_origin()):
                    self._forbid()
                    return
                parts = [unquote(p) for p in url.path.split("/") if p]
                query = {key: values[-1] for key, values in parse_qs(url.query, keep_blank_values=True).items()}
                if post:
                    self._action(run, parts)
                else:
                    self._read(run, parts, query)
            except BadQuery as error:
                self._json(400, {"error": str(error)})
            except QueueError as error:  # a damaged file, a lock held too long
                self._json(500, {"error": str(error)})
            except OSError:
                pass  # the browser went away
            except Exception as error:  # a bug: a 500 and one line on the terminal, not a traceback per request
                print(f"error: the dashboard could not answer a request: {type(error).__name__}: {error}",
                      file=sys.stderr)
                self._json(500, {"error": "internal error; the dashboard's terminal says more"})

        def _read(self, run: Any, parts: list[str], query: dict[str, str]) -> None:
            store = run.store
            if not parts:
                nonce = secrets.token_urlsafe(12)
                csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                       "connect-src 'self'; base-uri 'none'; form-action 'none'")
                self._send(200, dashboard_page(store, nonce, run.read_only), "text/html; charset=utf-8",
                           {"Content-Security-Policy": csp})
            elif len(parts) == 2 and parts[0] == "api" and parts[1] in DASHBOARD_PARAMETERS:
                self._json(200, self._api(store, parts[1], api_query(parts[1], query)))
            elif len(parts) == 3 and parts[:2] == ["api", "jobs"]:
                detail = job_detail(store, parts[2])
                if detail is None:
                    self._json(404, {"error": f"no job with id {parts[2]!r}"})
                else:
                    self._json(200, detail)
            else:
                self._json(404, {"error": "not found"})

        @staticmethod
        def _api(store: BaseStore, resource: str, given: dict[str, Any]) -> Any:
            if resource == "status":
                return status_data(store)
            if resource == "workers":
                return store.workers()
            if resource == "stats":
                return stats_data(store, given.get("since"))
            if resource == "timeline":
                return timeline(store, **given)  # minutes, if given
            return dashboard_jobs(store, given.get("state"), given.get("q", ""),
                                  given.get("limit", DASHBOARD_JOB_LIMIT))

        def _action(self, run: Any, parts: list[str]) -> None:
            """POST: retry a DLQ job, retry the whole DLQ, cancel a job (signed in, from the page's own origin)."""
            if run.read_only:
                self._json(403, {"error": "the dashboard is read-only (started with --read-only)"})
                return
            store = run.store
            if parts == ["api", "dlq", "retry-all"]:
                self._json(200, {"requeued": store.dlq_retry(None)})
                return
            if len(parts) != 4 or parts[:2] != ["api", "jobs"] or parts[3] not in ("retry", "cancel"):
                self._json(404, {"error": "no such action"})
                return
            job_id = parts[2]
            try:  # the store decides, under its lock: what a job is now may differ from what the page showed
                if parts[3] == "retry":
                    self._json(200, {"requeued": store.dlq_retry([job_id])})
                    return
                what, state = store.cancel([job_id])[job_id]
            except NoSuchJob:
                what = "unknown"
            except QueueError as error:
                self._json(409, {"error": str(error).rstrip(".")})
                return
            if what == "unknown":
                self._json(404, {"error": f"no job with id {job_id!r}"})
            elif what == "finished":
                self._json(409, {"error": f"job {job_id!r} has already finished ({state})"})
            else:
                self._json(200, {"result": what, "was": state})

    return DashboardHandler


def dashboard_page(store: BaseStore, nonce: str, read_only: bool) -> bytes:
    """The page, with the first data embedded (escaped) so it shows at once."""
    import html

    initial = {"status": status_data(store), "jobs": dashboard_jobs(store, "pending", "", DASHBOARD_JOB_LIMIT),
               "readOnly": read_only}
    values = {"nonce": nonce, "home": html.escape(store.location),
              "initial": safe_json(initial).decode("utf-8")}
    # One pass: a value that happens to contain {{name}} is not filled in again.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], DASHBOARD_PAGE).encode("utf-8", "replace")


def dashboard_server_class(ipv6: bool) -> type:
    """ThreadingHTTPServer with a backlog for bursts and at most DASHBOARD_THREADS requests at once."""
    import socket
    from http.server import ThreadingHTTPServer

    class DashboardServer(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ipv6 else socket.AF_INET
        request_queue_size = DASHBOARD_BACKLOG
        daemon_threads = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.slots = threading.BoundedSemaphore(DASHBOARD_THREADS)
            super().__init__(*args, **kwargs)

        def process_request(self, request: Any, client_address: Any) -> None:
            self.slots.acquire()  # all busy: this waits, and new connections wait in the backlog
            try:
                super().process_request(request, client_address)
            except Exception:  # no thread started (a Ctrl+C in between is left alone: we are stopping)
                self.slots.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    return DashboardServer


def open_dashboard(url: str) -> str:
    """Open url in the web browser by way of an owner-only file that forwards to it, so that the token
    is not on a browser's command line, which every local user can read (ps, /proc). Returns the file."""
    import html
    import tempfile
    import webbrowser
    from pathlib import Path

    fd, path = tempfile.mkstemp(prefix="queuectl-dashboard-", suffix=".html")  # 0600, not in the data folder
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0; '
                     f'url={html.escape(url)}"><title>queuectl</title><a href="{html.escape(url)}">Open the '
                     f'dashboard</a>\n')
    webbrowser.open(Path(path).as_uri())
    return path


def cmd_dashboard(args: argparse.Namespace, store: BaseStore) -> int:
    import secrets
    import types

    if not 0 <= args.port <= 65535:
        raise QueueError("--port must be between 0 and 65535.")
    idle = os.environ.get(DASHBOARD_TIMEOUT_ENV)
    idle_timeout = (parse_duration(idle, DASHBOARD_TIMEOUT_ENV) if idle else 0) or DASHBOARD_IDLE_TIMEOUT
    store.check()  # a damaged file is reported now, not as a broken page
    try:
        server = dashboard_server_class(":" in args.host)((args.host, args.port), make_dashboard_handler())
    except OSError as error:
        raise QueueError(f"cannot listen on {args.host} port {args.port}: {error.strerror or error}"
                         + ("; pick another with --port" if args.port else "") + ".") from None
    port = server.server_address[1]
    loopback = args.host in ("localhost", "::1") or args.host.startswith("127.")
    hosts = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]", args.host)} if loopback else None
    token = secrets.token_urlsafe(32)  # new each run: a restart signs every browser out
    server.queuectl = types.SimpleNamespace(  # type: ignore[attr-defined]
        store=store, token=token, cookie=f"queuectl-{port}", read_only=args.read_only, hosts=hosts,
        idle_timeout=idle_timeout)  # the cookie is named for the port: browsers share 127.0.0.1's among ports
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{port}/?token={token}"
    if not loopback:
        print(f"warning: the dashboard listens on {args.host} over plain HTTP: anyone who can watch the network "
              f"between your browser and this machine can read its token and every job's command and output"
              + ("." if args.read_only else ", and retry or cancel jobs."), file=sys.stderr)
    # The token goes to this terminal only: never into a file of the data folder, never into a log.
    print(f"Dashboard for {store.location}: {url}{' (read-only)' if args.read_only else ''}  "
          "(the address is the key: keep it to yourself; Ctrl+C to stop)")
    opener = open_dashboard(url) if args.open else None
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        print("Dashboard stopped.")
    finally:
        server.server_close()
        if opener:
            try:
                os.unlink(opener)
            except OSError:
                pass
    return 0


# The page: plain HTML, CSS and JavaScript, no build step and nothing fetched from elsewhere.
# Every value is put in with textContent, never as markup.
DASHBOARD_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>queuectl</title>
<style nonce="{{nonce}}">
body { font: 14px system-ui, sans-serif; margin: 0; color: #1d2330; background: #f4f5f7; }
header { background: #1d2330; color: #fff; padding: 10px 20px; display: flex; gap: 16px; align-items: baseline; }
header h1 { font-size: 18px; margin: 0; }
header .home { color: #aab; font-family: monospace; }
header .live { margin-left: auto; color: #8c8; }
header .live.stale { color: #e88; }
header .paused { margin-left: 12px; padding: 0 8px; border-radius: 4px; background: #c80; color: #fff; }
main { padding: 16px 20px; display: grid; gap: 16px; grid-template-columns: 1fr 1fr; }
section { background: #fff; border-radius: 6px; padding: 12px 16px; box-shadow: 0 1px 2px #0002; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .05em; color: #667; margin: 0 0 8px; }
.counts { display: flex; gap: 12px; flex-wrap: wrap; }
.count { min-width: 110px; padding: 8px 12px; border-radius: 6px; background: #f4f5f7; }
.count b { display: block; font-size: 30px; }
.count.dead b { color: #c33; } .count.failed b { color: #c80; } .count.completed b { color: #283; }
.count.processing b { color: #36c; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
th { color: #667; font-weight: 600; }
td.cmd { font-family: monospace; max-width: 480px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
tr.job { cursor: pointer; } tr.job:hover { background: #eef3ff; } tr.job.selected { background: #dde7ff; }
.tabs { display: flex; gap: 4px; margin-bottom: 8px; align-items: center; }
.tabs button { border: 1px solid #ccd; background: #fff; padding: 4px 10px; border-radius: 4px; cursor: pointer; }
.tabs button.on { background: #1d2330; color: #fff; }
.tabs input { margin-left: auto; padding: 4px 8px; width: 220px; }
button.action { border: 1px solid #36c; color: #36c; background: #fff; border-radius: 4px; padding: 3px 10px;
                cursor: pointer; }
button.action.danger { border-color: #c33; color: #c33; }
pre { background: #1d2330; color: #e6e6e6; padding: 8px; border-radius: 4px; max-height: 260px; overflow: auto;
      white-space: pre-wrap; word-break: break-all; }
.alive { color: #283; } .dead-worker { color: #c33; }
.muted { color: #889; }
#message { color: #c33; min-height: 1em; }
#detail th { width: 150px; }
#detail pre { max-height: 320px; }
svg text { font-size: 10px; fill: #667; }
</style>
</head>
<body>
<header><h1>queuectl</h1><span class="home">{{home}}</span><span class="live" id="live">live</span>
<span class="paused" id="paused" hidden></span></header>
<main>
<section class="wide"><h2>Jobs</h2><div class="counts" id="counts"></div></section>
<section><h2>Workers</h2><table id="workers"></table></section>
<section><h2>Running now</h2><table id="running"></table></section>
<section class="wide"><h2>Finished per minute, last hour</h2><div id="chart"></div></section>
<section class="wide">
  <div class="tabs" id="tabs"></div>
  <div id="message"></div>
  <table id="jobs"></table>
</section>
<section class="wide" id="detail" hidden></section>
</main>
<script type="application/json" id="initial">{{initial}}</script>
<script nonce="{{nonce}}">
"use strict";
const INITIAL = JSON.parse(document.getElementById("initial").textContent);
const STATES = ["pending", "processing", "failed", "completed", "dead", "cancelled"];
let tab = "pending", filter = "", selected = null;
{ // a link can name a tab and a job: #dead/job7
  const [state, job] = location.hash.slice(1).split("/");
  if (STATES.includes(state)) tab = state;
  if (job) selected = decodeURIComponent(job);
}
function remember() {
  history.replaceState(null, "", `#${tab}${selected ? "/" + encodeURIComponent(selected) : ""}`);
}

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}
function fill(id, ...nodes) { document.getElementById(id).replaceChildren(...nodes); }
function ago(stamp) {
  if (!stamp) return "-";
  const s = Math.max(0, (Date.now() - Date.parse(stamp)) / 1000);
  return s < 90 ? s.toFixed(1) + " s" : s < 5400 ? (s / 60).toFixed(1) + " min" : (s / 3600).toFixed(1) + " h";
}
async function api(path, options) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body;
  try { body = JSON.parse(text); } catch { body = {error: text.trim()}; }  // a 403 is plain text
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
async function act(path) {
  try { await api(path, {method: "POST"}); fill("message"); }
  catch (error) { fill("message", error.message); }
  refresh();
}

function showCounts(status) {
  fill("counts", ...STATES.map(state => el("div", {class: "count " + state},
    el("b", {"data-state": state}, status.counts[state]), state === "dead" ? "dead (DLQ)" : state)));
  const paused = document.getElementById("paused");
  paused.hidden = !status.paused;
  paused.textContent = status.paused ? "paused since " + new Date(status.paused_since).toLocaleString()
    : "";
}
function showWorkers(workers) {
  fill("workers", el("tr", {}, ...["pid", "host", "threads", "last heartbeat", ""].map(h => el("th", {}, h))),
    ...workers.map(w => el("tr", {}, el("td", {}, w.pid), el("td", {}, w.host), el("td", {}, w.threads),
      el("td", {}, ago(w.heartbeat_at) + " ago"),
      el("td", {class: w.alive ? "alive" : "dead-worker"}, w.alive ? "alive" : "not responding"))));
  if (!workers.length) fill("workers", el("tr", {}, el("td", {class: "muted"}, "No worker is running.")));
}
function showRunning(jobs) {
  fill("running", el("tr", {}, ...["id", "attempt", "running for", "command"].map(h => el("th", {}, h))),
    ...jobs.map(j => el("tr", {class: "job", onclick: () => select(j.id)}, el("td", {}, j.id),
      el("td", {}, j.attempts), el("td", {}, ago(j.started_at)), el("td", {class: "cmd"}, j.command))));
  if (!jobs.length) fill("running", el("tr", {}, el("td", {class: "muted"}, "Nothing is running.")));
}
function showChart(minutes) {
  const NS = "http://www.w3.org/2000/svg", width = 900, height = 110, bar = width / minutes.length;
  const top = Math.max(1, ...minutes.map(m => m.completed + m.dead + m.cancelled));
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 16}`);
  svg.setAttribute("width", "100%");
  const rect = (x, y, h, color, title) => {
    const r = document.createElementNS(NS, "rect");
    const attributes = {x, y, width: Math.max(1, bar - 2), height: h, fill: color};
    for (const [k, v] of Object.entries(attributes)) r.setAttribute(k, v);
    const t = document.createElementNS(NS, "title"); t.textContent = title; r.append(t); svg.append(r);
  };
  minutes.forEach((m, i) => {
    const label = `${m.minute.slice(11, 16)} UTC: ${m.completed} completed, ${m.dead} dead, ${m.cancelled} cancelled`;
    let y = height;
    for (const [n, color] of [[m.completed, "#2a8"], [m.dead, "#c33"], [m.cancelled, "#999"]]) {
      const h = n / top * (height - 4); y -= h; if (n) rect(i * bar, y, h, color, label);
    }
  });
  for (const [x, text, anchor] of [[0, "-60 min", "start"], [width, "now", "end"]]) {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", x); t.setAttribute("y", height + 12); t.setAttribute("text-anchor", anchor);
    t.textContent = text; svg.append(t);
  }
  const total = minutes.reduce((a, m) => [a[0] + m.completed, a[1] + m.dead], [0, 0]);
  fill("chart", svg, el("div", {class: "muted"},
    `${total[0]} completed (green), ${total[1]} dead (red) in the last hour; peak ${top}/min`));
}
function showTabs(counts) {
  const input = el("input", {type: "search", placeholder: "filter by id, command, error", value: filter});
  input.addEventListener("input", () => { filter = input.value; loadJobs(); });
  const choose = state => () => { tab = state; remember(); loadJobs(); showTabs(counts); };
  const buttons = STATES.map(s => el("button", {class: s === tab ? "on" : "", onclick: choose(s)},
    `${s} (${counts[s]})`));
  fill("tabs", ...buttons, input);
  if (document.activeElement?.type === "search") input.focus();
}
function showJobs(jobs) {
  const button = (j, what, style) => el("button", {class: style, onclick: event => {
    event.stopPropagation(); act(`/api/jobs/${encodeURIComponent(j.id)}/${what}`);
  }}, what);
  const actions = j => {
    if (INITIAL.readOnly) return "";
    if (j.state === "dead") return button(j, "retry", "action");
    if (["pending", "processing", "failed"].includes(j.state)) return button(j, "cancel", "action danger");
    return "";
  };
  const titles = ["id", "state", "attempts", "priority", "updated", "command", "last error", ""];
  const head = el("tr", {}, ...titles.map(h => el("th", {}, h)));
  if (tab === "dead" && jobs.length && !INITIAL.readOnly)
    head.lastChild.append(el("button", {class: "action", onclick: () => act("/api/dlq/retry-all")}, "retry all"));
  const row = j => ({class: j.id === selected ? "job selected" : "job", onclick: () => select(j.id)});
  fill("jobs", head, ...jobs.map(j => el("tr", row(j),
    el("td", {}, j.id), el("td", {}, j.state), el("td", {}, j.attempts), el("td", {}, j.priority ?? 0),
    el("td", {}, ago(j.updated_at) + " ago"), el("td", {class: "cmd", title: j.command}, j.command),
    el("td", {}, j.error || ""), el("td", {}, actions(j)))));
  if (!jobs.length) {
    const none = `No ${tab} jobs${filter ? " match" : ""}.`;
    document.getElementById("jobs").append(el("tr", {}, el("td", {class: "muted"}, none)));
  }
}
async function loadJobs() {
  try { showJobs(await api(`/api/jobs?state=${tab}&q=${encodeURIComponent(filter)}`)); }
  catch (error) { fill("message", error.message); }
}
async function select(id) { selected = id; remember(); await showDetail(); loadJobs(); }
async function showDetail() {
  const box = document.getElementById("detail");
  if (!selected) { box.hidden = true; return; }
  try {
    const d = await api(`/api/jobs/${encodeURIComponent(selected)}`);
    const fields = Object.entries(d.job).filter(([k]) => k !== "output");
    box.replaceChildren(el("h2", {}, "Job " + d.job.id),
      el("table", {}, ...fields.map(([k, v]) => el("tr", {}, el("th", {}, k),
        el("td", {}, v !== null && typeof v === "object" ? JSON.stringify(v) : v ?? "-")))),
      el("h2", {}, "Last error"), el("div", {}, d.job.error || "-"),
      el("h2", {}, "Output (end of " + d.log + ")"), el("pre", {}, d.log_tail || d.job.output || "(no output)"));
    box.hidden = false;
  } catch (error) { box.replaceChildren(el("div", {}, error.message)); }
}
function live(style, text) {
  const badge = document.getElementById("live");
  badge.className = style;
  badge.textContent = text;
}
async function refresh() {
  try {
    const [status, workers, running, minutes] = await Promise.all([api("/api/status"), api("/api/workers"),
      api("/api/jobs?state=processing"), api("/api/timeline")]);
    showCounts(status); showTabs(status.counts); showWorkers(workers); showRunning(running); showChart(minutes);
    await loadJobs(); if (selected) await showDetail();
    live("live", "live");
  } catch (error) {
    live("live stale", "not updating: " + error.message);
  }
}
showCounts(INITIAL.status); showTabs(INITIAL.status.counts);
if (tab === "pending") showJobs(INITIAL.jobs);
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""


# --------------------------------------------------------------------------
# 12. The argparse tree and main
# --------------------------------------------------------------------------


# -- argparse tree ----------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, with examples kept verbatim in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argparse tree; with `only`, just that command's branch (building all of
    them costs a one-shot command more than the rest of its parsing)."""
    parser = Parser(prog="queuectl", description="A job queue for shell commands that lives in a folder "
                                                 "(or in PostgreSQL, for workers on many machines).",
                    epilog="Example:\n  queuectl enqueue --id hello --command \"echo hello\"\n"
                           "  queuectl worker start --count 2 --burst")
    parser.add_argument("--version", action="version", version=f"queuectl {__version__}")
    parser.add_argument("--home", metavar="DIR|URL",
                        help="where the queue lives: a data folder, or a postgresql:// URL "
                             "(default: $QUEUECTL_HOME, else the current folder)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, handler: Callable, help_text: str, example: str,
            into: Any = sub) -> argparse.ArgumentParser:
        p = into.add_parser(name, help=help_text, description=help_text,
                            epilog="Example:\n  " + example.replace("\n", "\n  "))
        p.set_defaults(handler=handler)
        return p

    def group(name: str, help_text: str, example: str) -> Any:
        """A command with its own subcommands (worker, dlq, config)."""
        actions = add(name, None, help_text, example).add_subparsers(dest="action", metavar="ACTION")
        actions.required = True
        return actions

    def wanted(name: str) -> bool:
        return only is None or name == only

    if wanted("enqueue"):
        p = add("enqueue", cmd_enqueue, "add one or more jobs",
                "queuectl enqueue --id job1 --command \"sleep 2\"\n"
                "queuectl enqueue '{\"id\":\"job1\",\"command\":\"sleep 2\"}'\n"
                "queuectl enqueue --id test --command \"make test\" --cwd ~/proj --env MODE=fast\n"
                "queuectl enqueue --id deploy --command \"./deploy.sh\" --after build,test\n"
                "queuectl enqueue --file jobs.json        (an object, an array, or one object per line)")
        p.add_argument("job", nargs="?", help="the job as JSON (or - for stdin)")
        p.add_argument("--json", metavar="TEXT", help="the job(s) as JSON (or - for stdin)")
        p.add_argument("--file", metavar="PATH", help="read jobs from a file (- for stdin)")
        p.add_argument("--id", help="job id (1-64 letters, digits, . _ -)")
        p.add_argument("--command", help="the shell command to run")
        p.add_argument("--max-retries", type=str, metavar="N", help="attempts before the DLQ (default: config)")
        p.add_argument("--priority", type=str, metavar="N", help="higher runs first (default 0)")
        p.add_argument("--run-at", metavar="TIME", help="ISO-8601 time; without an offset it is local time")
        p.add_argument("--delay", metavar="DURATION", help="run after 90, 90s, 5m, 2h")
        p.add_argument("--timeout", metavar="SECONDS", help="kill the command after this long")
        p.add_argument("--shell", metavar="SHELL",
                       help=f"run it with {', '.join(SHELLS)} (default: config shell)")
        p.add_argument("--cwd", metavar="DIR", help="run it in DIR (default: the directory you enqueue from)")
        p.add_argument("--env", action="append", metavar="NAME=VALUE",
                       help="add a variable to its environment (repeatable)")
        p.add_argument("--after", action="append", metavar="ID",
                       help="run only once this job has completed (repeatable, or ids separated by commas)")

    if wanted("worker"):
        wsub = group("worker", "start or stop workers", "queuectl worker start --count 4")
        p = add("start", cmd_worker_start, "run workers in the foreground until stopped",
                "queuectl worker start --count 4\nqueuectl worker start --burst     (exit when nothing is due)",
                wsub)
        p.add_argument("--count", type=int, default=1, metavar="N", help="threads in this process (default 1)")
        p.add_argument("--burst", action="store_true", help="exit when nothing is due or running")
        p = add("stop", cmd_worker_stop, "ask every worker on this folder to finish its job and exit",
                "queuectl worker stop --wait", wsub)
        p.add_argument("--wait", action="store_true", help="return once they have exited")

    if wanted("pause"):
        add("pause", cmd_pause, "workers of every process and host start no new job until resume",
            "queuectl pause")
    if wanted("resume"):
        add("resume", cmd_resume, "workers start jobs again after a pause", "queuectl resume")

    if wanted("status"):
        p = add("status", cmd_status, "counts per state and the workers", "queuectl status --json")
        p.add_argument("--json", action="store_true", help="print JSON only")

    if wanted("list"):
        p = add("list", cmd_list, "list jobs", "queuectl list --state pending --limit 20")
        p.add_argument("--state", type=normalize_state,
                       help="pending, processing, failed, completed, dead, cancelled (or processed, dlq)")
        p.add_argument("--limit", type=int, metavar="N", help="show at most N jobs")
        p.add_argument("--json", action="store_true", help="print a JSON array only")

    if wanted("show"):
        p = add("show", cmd_show, "one job in full", "queuectl show job1 --json")
        p.add_argument("id")
        p.add_argument("--json", action="store_true", help="print JSON only")

    if wanted("logs"):
        p = add("logs", cmd_logs, "what a job printed, each attempt under a one-line header",
                "queuectl logs job1\nqueuectl logs job1 --follow      (stream it while it runs)\n"
                "queuectl logs job1 --attempt 2 --tail 20")
        p.add_argument("id")
        p.add_argument("--tail", type=int, metavar="N", help="only the last N lines of each attempt")
        p.add_argument("--follow", "-f", action="store_true",
                       help="stream new output until the job is no longer processing")
        p.add_argument("--attempt", type=int, metavar="K", help="only attempt K")

    if wanted("cancel"):
        p = add("cancel", cmd_cancel, "cancel jobs: pending ones at once, running ones have their command killed",
                "queuectl cancel job1 job2")
        p.add_argument("ids", nargs="+", metavar="ID")

    if wanted("purge"):
        p = add("purge", cmd_purge, "delete finished jobs and their logs from the history",
                "queuectl purge --state completed --older-than 7d --yes")
        p.add_argument("--state", type=finished_state, help="completed, dead or cancelled (default: all three)")
        p.add_argument("--older-than", type=duration_arg, metavar="DURATION",
                       help="only jobs finished longer ago than this: 90s, 30m, 12h, 7d")
        p.add_argument("--yes", action="store_true", help="do not ask (needed when there is no terminal)")

    if wanted("stats"):
        p = add("stats", cmd_stats, "how the queue is doing: outcomes, run times, waits, throughput, backlog",
                "queuectl stats --since 1h")
        p.add_argument("--since", type=duration_arg, metavar="DURATION",
                       help="only jobs finished in the last DURATION (default: all)")
        p.add_argument("--json", action="store_true", help="print JSON only")

    if wanted("wait"):
        p = add("wait", cmd_wait, "wait until jobs finish: exit 0 all completed, 1 any dead or cancelled, 124 timeout",
                "queuectl wait job1 job2 --timeout 60\nqueuectl wait                (every pending and processing job)")
        p.add_argument("ids", nargs="*", metavar="ID")
        p.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (exit 124)")

    if wanted("dashboard"):
        p = add("dashboard", cmd_dashboard, "a live web page of the queue, with retry and cancel buttons",
                "queuectl dashboard                 (then open the address it prints, with its token)\n"
                "queuectl dashboard --port 9000 --open --read-only")
        p.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
        p.add_argument("--port", type=int, default=8787, help="port (default 8787; 0 picks a free one)")
        p.add_argument("--open", action="store_true", help="open it in the web browser")
        p.add_argument("--read-only", action="store_true", help="no retry or cancel actions")

    if wanted("dlq"):
        dsub = group("dlq", "the Dead Letter Queue", "queuectl dlq retry --all")
        p = add("list", cmd_dlq_list, "jobs in the DLQ", "queuectl dlq list --json", dsub)
        p.add_argument("--json", action="store_true", help="print a JSON array only")
        p = add("retry", cmd_dlq_retry, "move dead jobs back to pending (attempts reset to 0)",
                "queuectl dlq retry job1 job2\nqueuectl dlq retry --all", dsub)
        p.add_argument("ids", nargs="*", metavar="ID")
        p.add_argument("--all", action="store_true", help="every job in the DLQ")

    if wanted("requeue"):
        p = add("requeue", cmd_requeue, "send completed, dead or cancelled jobs back to pending (attempts reset)",
                "queuectl requeue build1 test2")
        p.add_argument("ids", nargs="+", metavar="ID")

    if wanted("export"):
        p = add("export", cmd_export, "print every job (all states, every field), one JSON object a line",
                "queuectl export > jobs.jsonl\nqueuectl export --state dead --file dead.jsonl\n"
                "queuectl --home ./jobs export | queuectl --home postgresql://db/jobs import -")
        p.add_argument("--state", type=normalize_state, action="append",
                       help="only jobs in this state (repeatable)")
        p.add_argument("--file", metavar="PATH", help="write to PATH instead of standard output")

    if wanted("import"):
        p = add("import", cmd_import, "add the jobs an export wrote, with their states (all or nothing)",
                "queuectl import jobs.jsonl\n"
                "queuectl --home ./jobs export | queuectl --home postgresql://db/jobs import -")
        p.add_argument("source", metavar="FILE", help="an export file, or - for standard input")

    if wanted("db"):
        dsub = group("db", "the schema of a queue in a database",
                     "queuectl --home postgresql://db.example/jobs db status")
        p = add("status", cmd_db_status, "the installed and the known schema version",
                "queuectl db status --json", dsub)
        p.add_argument("--json", action="store_true", help="print JSON only")
        p.set_defaults(raw_store=True)
        p = add("migrate", cmd_db_migrate, "apply the schema upgrades this queuectl knows (under a lock)",
                "queuectl db migrate --dry-run", dsub)
        p.add_argument("--dry-run", action="store_true", help="print the SQL and change nothing")
        p.set_defaults(raw_store=True)
    if wanted("config"):
        csub = group("config", "show or change settings", "queuectl config set max-retries 5")
        p = add("show", cmd_config_show, "every setting", "queuectl config show --json", csub)
        p.add_argument("--json", action="store_true", help="print JSON only")
        p = add("get", cmd_config_get, "one setting", "queuectl config get max_retries", csub)
        p.add_argument("key")
        p.add_argument("--json", action="store_true", help="print the value as JSON")
        p = add("set", cmd_config_set, "change a setting (saved in config.json)",
                "queuectl config set backoff-base 3", csub)
        p.add_argument("key")
        p.add_argument("value")
    return parser


def configure_console() -> None:
    """No job output may crash the printer (UnicodeEncodeError on Windows pipes)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="replace", line_buffering=True)  # type: ignore[attr-defined]
        except (AttributeError, ValueError):
            pass


COMMANDS = ("enqueue", "worker", "pause", "resume", "status", "list", "show", "logs", "cancel", "purge", "stats",
            "wait", "dashboard", "dlq", "requeue", "export", "import", "db", "config")


def command_named(argv: list[str]) -> str | None:
    """The command an argument list names, or None (help, a typo, nothing: build every branch)."""
    rest = iter(argv)
    for arg in rest:
        if arg == "--home":
            next(rest, None)
        elif arg in ("-h", "--help"):
            return None
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    configure_console()
    parser = build_parser(command_named(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    if extra:
        return unrecognized(parser, args, extra)
    store: BaseStore | None = None
    try:
        store = open_store(queue_location(args))
        if not getattr(args, "raw_store", False):  # `db` looks at a schema that may be missing or old
            store.config()  # a damaged config.json stops every command, not only some
            store.prepare()
        return args.handler(args, store)
    except QueueError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as error:  # a file system problem no check above foresaw: still one line
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {error.strerror or error}{where}.", file=sys.stderr)
        return 1
    finally:
        if store is not None:
            store.close()
            flush_notes(store)


def unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> int:
    """Arguments argparse could not place: JSON split by PowerShell gets advice, the rest argparse's error."""
    if getattr(args, "handler", None) is cmd_enqueue:
        pieces = [value for value in (args.json, args.job) if value is not None] + extra
        if looks_split(pieces[0]):
            print(f"error: {split_json_message(pieces)}", file=sys.stderr)
            return 2
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return 2


def main_entry() -> None:
    """The console script installed by pip."""
    sys.exit(main())


if __name__ == "__main__":
    # Run as `python queuectl.py`, this file is the module __main__: a store module that imports
    # queuectl must get this one, not a second copy with classes of its own.
    sys.modules.setdefault("queuectl", sys.modules[__name__])
    main_entry()
