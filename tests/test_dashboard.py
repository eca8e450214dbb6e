"""The web dashboard as a user meets it: a real `queuectl dashboard` process, asked over HTTP.

Every test starts the server on a free port (`--port 0`, the URL read from its first line),
signs in as a browser does (the printed URL's token, swapped for a cookie), talks to it with
urllib (no proxy), and stops it at the end, so no server is left running. What the API answers
is checked against what the command line prints for the same folder.
"""

from __future__ import annotations

import html
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from conftest import SCRIPT, Queue, fast, kill_group, needs, process_gone, wait_until

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals and process groups")

FIRST_LINE = re.compile(r"Dashboard for (?P<home>.+): "
                        r"(?P<url>http://(?P<host>[^/\s]+):(?P<port>\d+)/\?token=(?P<token>[\w-]+))(?: |$)")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP proxy
XSS = '<script>alert(1)</script>'


# -- helpers ------------------------------------------------------------------


def _default_sigint() -> None:
    """In the server process: Ctrl+C as at a terminal, even when the test runner ignores SIGINT
    (Python turns SIGINT into KeyboardInterrupt only if its parent left it at the default)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_line(proc: subprocess.Popen, timeout: float = 15.0) -> str:
    """One line of the process's stdout, failing the test instead of hanging."""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no line on stdout within {timeout} s")
    return proc.stdout.readline().decode("utf-8", "replace")


class Response:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:300]!r}>"


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Response:
    data = b"" if method == "POST" else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with OPENER.open(req, timeout=15) as answer:
            return Response(answer.status, answer.headers, answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, error.headers, error.read())


class Dashboard:
    """`queuectl dashboard --port 0 ARGS` on a queue's folder, in its own session, signed in.

    get/post send the cookie the printed URL gave (`token=...`, the default), a cookie of this
    dashboard's name holding another value (`token="wrong"`), or none (`token=None`)."""

    def __init__(self, queue: Queue, *args: str, env: dict[str, str] | None = None) -> None:
        self.queue = queue
        self.err_path = queue.home.parent / f"dashboard-{time.monotonic_ns()}.err"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, SCRIPT, "dashboard", "--port", "0", *args],
                                         env={**queue.env(), **(env or {})}, cwd=str(queue.home),
                                         stdout=subprocess.PIPE, stderr=err, start_new_session=True,
                                         preexec_fn=_default_sigint)
        queue.procs.append(self.proc)  # killed at teardown whatever happens
        self.first_line = read_line(self.proc)
        match = FIRST_LINE.match(self.first_line)
        assert match, f"unexpected first line {self.first_line!r}; stderr: {self.stderr()!r}"
        self.match = match
        self.port = int(match["port"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = match["token"]
        self.cookie_name = f"queuectl-{self.port}"
        self.sign_in()

    def sign_in(self) -> Response:
        """Open the printed URL as a browser does: the answer sets the cookie and moves on to `/`."""
        answer = request(self.match["url"])
        assert answer.status == 200, answer
        assert answer.headers["Set-Cookie"] == (f"{self.cookie_name}={self.token}; HttpOnly; SameSite=Strict; "
                                                "Path=/"), answer.headers
        return answer

    def stderr(self) -> str:
        return self.err_path.read_text("utf-8", "replace")

    def _headers(self, token: Any, headers: dict[str, str]) -> dict[str, str]:
        if token is not None:
            headers.setdefault("Cookie", f"{self.cookie_name}={self.token if token is ... else token}")
        return headers

    def get(self, path: str, token: Any = ..., **headers: str) -> Response:
        return request(self.base + path, headers=self._headers(token, headers))

    def get_json(self, path: str) -> Any:
        answer = self.get(path)
        assert answer.status == 200, f"GET {path} -> {answer}"
        assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
        return answer.json()

    def post(self, path: str, token: Any = ..., **headers: str) -> Response:
        return request(self.base + path, "POST", self._headers(token, headers))

    def page(self) -> str:
        answer = self.get("/")
        assert answer.status == 200, answer
        return answer.body.decode("utf-8")

    def close(self) -> None:
        """Stop it as Ctrl+C does (so `--open` removes its page file), then make sure it is gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.proc)
        self.proc.stdout.close()


@pytest.fixture
def dashboards(queue: Queue):
    """start(*args, on=queue) -> a running Dashboard; all of them are stopped at teardown."""
    started: list[Dashboard] = []

    def start(*args: str, on: Queue = queue, env: dict[str, str] | None = None) -> Dashboard:
        dashboard = Dashboard(on, *args, env=env)
        started.append(dashboard)
        return dashboard

    yield start
    for dashboard in started:
        dashboard.close()


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def folder_bytes(queue: Queue) -> dict[str, bytes]:
    """Every file of the data folder (but the lock), by relative path."""
    return {str(path.relative_to(queue.home)): path.read_bytes() for path in sorted(queue.home.rglob("*"))
            if path.is_file() and path.name != "queuectl.lock"}


def history(queue: Queue, failing: str = "echo broken >&2; exit 3") -> None:
    """Two completed jobs (ok1 then ok2) and one dead one (bad, after its one attempt)."""
    fast(queue, max_retries=1)
    queue.ok("enqueue", "--id", "ok1", "--command", "echo out-ok1")
    queue.ok("enqueue", "--id", "ok2", "--command", "echo out-ok2")
    queue.ok("enqueue", "--id", "bad", "--command", failing)
    queue.ok("worker", "start", "--burst")
    assert queue.states() == {"ok1": "completed", "ok2": "completed", "bad": "dead"}


# -- 1. the API is the CLI's --json ----------------------------------------------


def test_status_workers_stats_timeline_match_the_cli(queue: Queue, dashboards: Any) -> None:
    history(queue)
    queue.ok("enqueue", "--id", "gone", "--command", "echo never")
    queue.ok("cancel", "gone")
    queue.ok("enqueue", "--id", "later", "--command", "echo later", "--delay", "1h")  # pending, scheduled
    dash = dashboards()

    status = dash.get_json("/api/status")
    assert status == queue.json("status")
    assert status["counts"] == {"pending": 1, "processing": 0, "failed": 0, "completed": 2, "dead": 1,
                                "cancelled": 1}
    assert status["scheduled"] == 1 and status["workers"] == []

    assert status["paused"] is False
    queue.ok("pause")
    paused = dash.get_json("/api/status")
    assert paused["paused"] is True and paused["paused_since"] == queue.json("status")["paused_since"]
    assert 'id="paused"' in dash.get("/").body.decode() and "status.paused" in dash.get("/").body.decode()
    queue.ok("resume")

    stats = dash.get_json("/api/stats")
    assert stats == queue.json("stats")
    assert stats["finished"] == {"completed": 2, "dead": 1, "cancelled": 1}
    assert stats["success_rate"] == round(2 / 3, 4)

    recent, cli_recent = dash.get_json("/api/stats?since=1h"), queue.json("stats", "--since", "1h")
    window, cli_window = recent.pop("window"), cli_recent.pop("window")  # `until` is "now" for each
    assert recent == cli_recent and recent["finished"] == stats["finished"]
    assert window["seconds"] == cli_window["seconds"] == 3600

    before = time.time()
    minutes = dash.get_json("/api/timeline")
    after = time.time()
    assert len(minutes) == 60
    assert [set(m) for m in minutes] == [{"minute", "completed", "dead", "cancelled"}] * 60
    start = epoch(minutes[0]["minute"])
    assert [epoch(m["minute"]) - start for m in minutes] == [60.0 * n for n in range(60)]
    assert epoch(minutes[-1]["minute"]) in (before // 60 * 60, after // 60 * 60)  # the last one is this minute
    expected = [{"minute": m["minute"], "completed": 0, "dead": 0, "cancelled": 0} for m in minutes]
    for job in queue.json("list"):
        if job["state"] in ("completed", "dead", "cancelled"):
            expected[int((epoch(job["finished_at"]) - start) // 60)][job["state"]] += 1
    assert minutes == expected
    assert sum(m["completed"] for m in minutes) == 2 and sum(m["dead"] for m in minutes) == 1

    # A live worker: /api/workers has its heartbeat, as `status --json` lists it.
    worker = queue.start_worker("--count", "2")
    keys = ("pid", "host", "threads", "started_at", "heartbeat_at")

    def same_workers() -> list[dict[str, Any]] | None:
        api, cli = dash.get_json("/api/workers"), queue.json("status")["workers"]
        mine = [w for w in api if w["pid"] == worker.pid]
        if len(mine) == 1 and [{k: w.get(k) for k in keys} for w in api] == cli:  # (a beat may fall between)
            return mine
        return None

    [mine] = wait_until(same_workers, 15, what="the worker in /api/workers and status --json")
    assert mine["alive"] is True and mine["threads"] == 2 and mine["home"] == str(queue.home)
    assert dash.get_json("/api/status")["workers"] == queue.json("status")["workers"] != []
    kill_group(worker)
    assert all(not w["alive"] for w in dash.get_json("/api/workers") if w["pid"] == worker.pid)
    assert dash.get_json("/api/status")["workers"] == queue.json("status")["workers"] == []


# -- 2. the jobs table and a job's detail ------------------------------------------


def test_jobs_filters_order_and_detail(queue: Queue, dashboards: Any) -> None:
    history(queue)
    queue.ok("enqueue", "--id", "ok3", "--command", "echo out-ok3")
    queue.ok("worker", "start", "--burst")
    queue.ok("enqueue", "--id", "p1", "--command", "echo Needle in a haystack")
    queue.ok("enqueue", "--id", "p2", "--command", "echo plain")
    dash = dashboards()

    def ids(path: str) -> list[str]:
        return [job["id"] for job in dash.get_json(path)]

    completed = dash.get_json("/api/jobs?state=completed")
    assert [job["id"] for job in completed] == ["ok3", "ok2", "ok1"]  # newest first
    assert completed == queue.json("list", "--state", "completed")[::-1]
    finished = [epoch(job["finished_at"]) for job in completed]
    assert finished == sorted(finished, reverse=True)
    assert ids("/api/jobs?state=completed&limit=2") == ["ok3", "ok2"]
    assert ids("/api/jobs?state=completed&limit=0") == []
    assert ids("/api/jobs?state=pending") == ["p1", "p2"]
    assert dash.get_json("/api/jobs?state=dead") == queue.json("list", "--state", "dead")
    assert ids("/api/jobs?state=dlq") == ids("/api/jobs?state=DEAD") == ["bad"]  # the CLI's synonyms
    assert sorted(ids("/api/jobs")) == sorted(queue.states())

    # q: id, command or error, any case; with or without a state.
    assert ids("/api/jobs?q=NEEDLE") == ["p1"]  # command
    assert ids("/api/jobs?q=OK2") == ["ok2"]  # id
    assert ids("/api/jobs?q=Exit%20Code%203") == ["bad"]  # error ("exit code 3"), not in its command
    assert ids("/api/jobs?state=completed&q=out-ok") == ["ok3", "ok2", "ok1"]
    assert ids("/api/jobs?state=completed&q=out-ok&limit=1") == ["ok3"]
    assert ids("/api/jobs?state=pending&q=ok3") == []

    # One job: the record `show --json` prints, and the end of its log.
    detail = dash.get_json("/api/jobs/ok1")
    assert set(detail) == {"job", "log", "log_tail"}
    assert detail["job"] == queue.json("show", "ok1")
    assert detail["log"] == str(queue.home / "logs" / "ok1.log")
    assert "out-ok1\n" in detail["log_tail"] and "out-ok2" not in detail["log_tail"]
    dead = dash.get_json("/api/jobs/bad")
    assert dead["job"]["state"] == "dead" and "broken\n" in dead["log_tail"]

    for path in ("/api/jobs/nosuch", "/api/nope", "/favicon.ico", "/api/jobs/ok1/more/parts"):
        answer = dash.get(path)
        assert answer.status == 404, (path, answer)
        assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
        assert answer.json()["error"]
    assert "nosuch" in dash.get("/api/jobs/nosuch").json()["error"]
    for path, word in (("/api/jobs?state=zzz", "zzz"), ("/api/jobs?limit=many", "many"),
                       ("/api/stats?since=soon", "soon")):
        answer = dash.get(path)
        assert answer.status == 400, (path, answer)
        assert word in answer.json()["error"]


def test_bad_query_parameters_are_a_400_with_one_clear_sentence(queue: Queue, dashboards: Any) -> None:
    history(queue)
    dash = dashboards()
    states = "pending, processing, failed, completed, dead, cancelled (or processed, dlq)"
    cases = {
        "/api/jobs?limit=abc": "limit must be a whole number from 0 to 10000, not 'abc'.",
        "/api/jobs?limit=-1": "limit must be a whole number from 0 to 10000, not '-1'.",
        "/api/jobs?limit=2.5": "limit must be a whole number from 0 to 10000, not '2.5'.",
        "/api/jobs?limit=10001": "limit must be a whole number from 0 to 10000, not '10001'.",
        "/api/jobs?limit=99999999999999999999": "limit must be a whole number from 0 to 10000, "
                                                "not '99999999999999999999'.",
        "/api/jobs?limit=%C2%B2": "limit must be a whole number from 0 to 10000, not '\u00b2'.",  # a digit to isdigit()
        "/api/jobs?state=nope": f"unknown state 'nope'; valid states: {states}.",
        "/api/jobs?state=dead&limit=1&stat=dead": "unknown parameter 'stat': /api/jobs takes state, q, limit.",
        "/api/stats?since=abc": "since 'abc' is not a duration; use e.g. 90, 90s, 5m or 2h.",
        "/api/stats?since=-5m": "since '-5m' is not a duration; use e.g. 90, 90s, 5m or 2h.",
        "/api/stats?since=99999999999d": "since '99999999999d' is too long; the most is 1e9 seconds (about 31 years).",
        "/api/stats?until=1h": "unknown parameter 'until': /api/stats takes since.",
        "/api/timeline?minutes=0": "minutes must be a whole number from 1 to 1440, not '0'.",
        "/api/timeline?minutes=1e3": "minutes must be a whole number from 1 to 1440, not '1e3'.",
        "/api/status?verbose=1": "unknown parameter 'verbose': /api/status takes no parameters.",
        "/api/workers?x": "unknown parameter 'x': /api/workers takes no parameters.",
    }
    for path, message in cases.items():
        answer = dash.get(path)
        assert answer.status == 400 and answer.headers["Content-Type"] == "application/json; charset=utf-8", path
        assert answer.json() == {"error": message}, path

    # Good values, and empty ones (the defaults), still work; odd ids are a 404, never a crash.
    assert len(dash.get_json("/api/timeline?minutes=5")) == 5 and len(dash.get_json("/api/timeline")) == 60
    assert len(dash.get_json("/api/jobs?state=&q=&limit=")) == 3
    assert [job["id"] for job in dash.get_json("/api/jobs?state=%20Dead%20&limit=10000")] == ["bad"]
    assert dash.get_json("/api/stats?since=")["finished"] == dash.get_json("/api/stats")["finished"]
    for job_id in ("%00", "..", "..%2F..%2Fqueue.json", "%2Fetc%2Fpasswd", "x" * 5000, "%FF%FE"):
        answer = dash.get(f"/api/jobs/{job_id}")
        assert answer.status == 404 and answer.json()["error"].startswith("no job with id"), (job_id, answer)
    assert dash.proc.poll() is None and dash.stderr() == ""  # no traceback, still serving


# -- 3. actions: the token, what they do, and --read-only ----------------------------


def test_actions_need_the_cookie_and_their_own_origin_and_do_what_they_say(queue: Queue, dashboards: Any) -> None:
    fast(queue, max_retries=1)
    for job_id in ("d1", "d2", "d3"):
        queue.ok("enqueue", "--id", job_id, "--command", "exit 4")
    queue.ok("enqueue", "--id", "k1", "--command", "echo fine")
    queue.ok("worker", "start", "--burst")
    queue.ok("enqueue", "--id", "p1", "--command", "echo waiting")
    queue.ok("enqueue", "--id", "p2", "--command", "echo waiting too")
    dash = dashboards()
    token, own = dash.token, f"http://127.0.0.1:{dash.port}"

    actions = ["/api/jobs/d1/retry", "/api/dlq/retry-all", "/api/jobs/p1/cancel", "/api/jobs/k1/cancel"]
    before = folder_bytes(queue)
    for path in actions:
        for bad in (None, "", "wrong-" + token, token[:-1], token.upper() if token.upper() != token else "x"):
            answer = dash.post(path, bad, Origin=own)
            assert answer.status == 403 and answer.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert answer.body.startswith(b"Forbidden: open the address"), (path, bad, answer)
        assert dash.post(path + "?token=" + token, None).status == 403  # the URL's token only signs a GET in
        assert dash.post(path, None, Authorization="Bearer wrong").status == 403
        assert dash.post(path, None, **{"X-Queuectl-Token": token}).status == 403  # the old header is no key
        # Signed in, but sent by a page of another site or of another port on 127.0.0.1 (which
        # SameSite counts as the same site, so the cookie comes along): refused.
        for origin in (f"http://127.0.0.1:{dash.port + 1}", "http://evil.example", "null", own + "/x"):
            assert dash.post(path, Origin=origin).status == 403, origin
        assert dash.post(path, Origin=own, **{"Sec-Fetch-Site": "same-site"}).status == 403
        assert dash.get(path).status == 404  # a GET never acts
    assert folder_bytes(queue) == before
    assert queue.states() == {"d1": "dead", "d2": "dead", "d3": "dead", "k1": "completed",
                              "p1": "pending", "p2": "pending"}

    # As the page sends it: the cookie, from its own origin.
    answer = dash.post("/api/jobs/d1/retry", Origin=own, **{"Sec-Fetch-Site": "same-origin"})
    assert (answer.status, answer.json()) == (200, {"requeued": ["d1"]})
    shown = queue.json("show", "d1")
    assert shown["state"] == "pending" and shown["attempts"] == 0
    for path, status in (("/api/jobs/d1/retry", 409), ("/api/jobs/k1/retry", 409), ("/api/jobs/p1/retry", 409),
                         ("/api/jobs/nosuch/retry", 404), ("/api/jobs/p1/explode", 404)):
        answer = dash.post(path)
        assert answer.status == status and answer.json()["error"], (path, answer)

    # A script: the token in an Authorization header, no cookie, no Origin.
    answer = dash.post("/api/dlq/retry-all", None, Authorization=f"Bearer {token}")
    assert answer.status == 200 and sorted(answer.json()["requeued"]) == ["d2", "d3"]
    assert queue.json("dlq", "list") == []
    assert [queue.json("show", job_id)["state"] for job_id in ("d2", "d3")] == ["pending", "pending"]
    assert dash.post("/api/dlq/retry-all").json() == {"requeued": []}

    answer = dash.post("/api/jobs/p1/cancel")
    assert (answer.status, answer.json()) == (200, {"result": "cancelled", "was": "pending"})
    assert queue.json("show", "p1")["state"] == "cancelled"
    before = folder_bytes(queue)
    for path in ("/api/jobs/p1/cancel", "/api/jobs/k1/cancel"):  # finished: cancelled, completed
        answer = dash.post(path)
        assert answer.status == 409 and "already finished" in answer.json()["error"], (path, answer)
    assert dash.post("/api/jobs/nosuch/cancel").status == 404
    assert folder_bytes(queue) == before
    assert dash.get_json("/api/status")["counts"] == queue.json("status")["counts"] == {
        "pending": 4, "processing": 0, "failed": 0, "completed": 1, "dead": 0, "cancelled": 1}


def test_read_only_refuses_every_action(queue: Queue, dashboards: Any) -> None:
    history(queue)
    queue.ok("enqueue", "--id", "p1", "--command", "echo waiting")
    dash = dashboards("--read-only")
    assert "(read-only)" in dash.first_line
    page = dash.page()
    initial = json.loads(re.search(r'<script type="application/json" id="initial">(.*?)</script>', page)[1])
    assert initial["readOnly"] is True
    before = folder_bytes(queue)
    for path in ("/api/jobs/bad/retry", "/api/dlq/retry-all", "/api/jobs/p1/cancel"):
        answer = dash.post(path)
        assert answer.status == 403 and "read-only" in answer.json()["error"], (path, answer)
    assert folder_bytes(queue) == before
    assert queue.states() == {"ok1": "completed", "ok2": "completed", "bad": "dead", "p1": "pending"}
    assert dash.get_json("/api/jobs?state=dead")[0]["id"] == "bad"  # reading still works


# -- 4. job text is data, never markup ---------------------------------------------


def test_markup_in_a_command_is_escaped_in_page_and_api(queue: Queue, dashboards: Any) -> None:
    command = f'echo "{XSS}" && echo "a > b & c"'
    queue.ok("enqueue", "--id", "xss", "--command", command)
    dash = dashboards()
    answer = dash.get("/")
    assert answer.status == 200 and answer.headers["Content-Type"] == "text/html; charset=utf-8"
    page = answer.body.decode("utf-8")
    assert "<script>alert(1)" not in page and "a > b" not in page and "&& echo" not in page
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in page
    assert page.count("<script") == 2  # the embedded data and the page's own code, nothing else
    embedded = re.search(r'<script type="application/json" id="initial">(.*?)</script>', page, re.S)[1]
    assert [job["command"] for job in json.loads(embedded)["jobs"]] == [command]

    # The page's own script runs under a CSP nonce, fresh for each load.
    csp = answer.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", csp)[1]
    assert f'<script nonce="{nonce}">' in page and "default-src 'none'" in csp
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert nonce not in dash.get("/").headers["Content-Security-Policy"]

    for path in ("/api/jobs/xss", "/api/jobs?state=pending", "/api/jobs?q=alert"):
        raw = dash.get(path).body
        assert b"<" not in raw and b">" not in raw and b"&" not in raw, path
        assert b"\\u003cscript\\u003e" in raw and b"\\u0026\\u0026" in raw, path
    assert dash.get_json("/api/jobs/xss")["job"]["command"] == command
    assert dash.get_json("/api/jobs?q=alert")[0]["command"] == command


def test_folder_name_is_escaped_in_the_page(tmp_path: Path, dashboards: Any) -> None:
    odd = Queue(tmp_path / 'a<b>"c"&d')
    odd.home.mkdir()
    try:
        dash = dashboards(on=odd)
        page = dash.page()
        assert '<span class="home">' + str(tmp_path) + "/a&lt;b&gt;&quot;c&quot;&amp;d</span>" in page
        assert "a<b>" not in page
        assert dash.get_json("/api/status")["home"] == str(odd.home)
    finally:
        odd.cleanup()


def test_folder_name_with_a_placeholder_is_shown_as_is(tmp_path: Path, dashboards: Any) -> None:
    odd = Queue(tmp_path / "q{{initial}}")
    odd.home.mkdir()
    try:
        page = dashboards(on=odd).page()
        assert f'<span class="home">{odd.home}</span>' in page
    finally:
        odd.cleanup()


def test_folder_name_that_is_not_utf8(tmp_path: Path, dashboards: Any) -> None:
    odd = Queue(tmp_path / os.fsdecode(b"caf\xe9"))
    try:
        odd.home.mkdir()
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    try:
        odd.ok("enqueue", "--id", "j1", "--command", "echo hi")
        assert odd.json("status")["counts"]["pending"] == 1  # the CLI copes
        dash = dashboards(on=odd)
        for path in ("/", "/api/status", "/api/jobs/j1"):
            answer = dash.get(path)
            assert answer.status == 200, (path, answer)
    finally:
        odd.cleanup()


# -- 5. cancelling a running job from the page ------------------------------------


def test_cancel_of_a_running_job(queue: Queue, dashboards: Any) -> None:
    fast(queue)
    queue.ok("enqueue", "--id", "sleeper", "--command", "echo command pid $$; exec sleep 30")
    worker = queue.start_worker()
    dash = dashboards()
    pid = None
    try:
        def running() -> dict[str, Any] | None:
            job = dash.get_json("/api/jobs/sleeper")["job"]
            return job if job["state"] == "processing" and job.get("pid") == worker.pid else None

        wait_until(running, 15, what="sleeper to run")
        # Its detail holds the live output so far: the running attempt's title, then what it printed.
        header = wait_until(lambda: re.search(r"=== attempt 1, started .*: running\ncommand pid (\d+)",
                                              dash.get_json("/api/jobs/sleeper")["log_tail"]),
                            10, what="the command pid in the live log")
        pid = int(header[1])
        assert dash.get_json("/api/jobs?state=processing")[0]["id"] == "sleeper"

        answer = dash.post("/api/jobs/sleeper/cancel")
        assert (answer.status, answer.json()) == (200, {"result": "requested", "was": "processing"})
        wait_until(lambda: dash.get_json("/api/jobs/sleeper")["job"]["state"] == "cancelled", 5,
                   what="the dashboard to show sleeper cancelled")
        shown = queue.json("show", "sleeper")
        assert shown["state"] == "cancelled"
        assert wait_until(lambda: process_gone(pid), 5, what="the sleep command to be killed")
        counts = dash.get_json("/api/status")["counts"]
        assert counts["cancelled"] == 1 and counts["processing"] == 0
        assert [job["id"] for job in dash.get_json("/api/jobs?state=cancelled")] == ["sleeper"]
        assert worker.poll() is None  # the worker goes on
        assert dash.post("/api/jobs/sleeper/cancel").status == 409
    finally:
        kill_group(worker)
        if pid is not None and not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


# -- 6. who may talk to it (the token, the cookie, the Host), and how it stops -------


FORBIDDEN = b"Forbidden: open the address that `queuectl dashboard` printed; its token lets this browser in.\n"
SECRET = "s3cret-output-42"


def test_without_the_token_every_path_is_a_bare_403(queue: Queue, dashboards: Any) -> None:
    history(queue)
    queue.ok("enqueue", "--id", "secret", "--command", f"echo {SECRET}")
    queue.ok("worker", "start", "--burst")
    dash = dashboards()
    token = dash.token
    paths = ["/", "/api/status", "/api/workers", "/api/stats", "/api/timeline", "/api/jobs",
             "/api/jobs?state=completed", "/api/jobs/secret", "/api/jobs/nosuch", "/api/nope", "/favicon.ico",
             "/api/jobs?limit=abc", "/?token=", "/?token=wrong", f"/?token={token[:-1]}", f"/?token={token}x",
             f"/?token={token}&token=wrong", f"/api/jobs/secret?token={token.upper()}"]
    cookies = [None, "", "wrong", token[:-1], token + "x", token.upper(), f'"{token}"']  # values of its cookie
    others = [{"Cookie": f"queuectl-{dash.port + 1}={token}"},  # the cookie of another port's dashboard
              {"Cookie": f"token={token}"}, {"Authorization": f"Bearer {token[:-1]}"}, {"Authorization": token},
              {"Authorization": f"Basic {token}"}, {"X-Queuectl-Token": token}]
    for path in paths:
        for answer in [dash.get(path, c) for c in cookies] + [dash.get(path, None, **h) for h in others]:
            assert answer.status == 403, (path, answer)
            assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert answer.body == FORBIDDEN and SECRET.encode() not in answer.body
            assert "Set-Cookie" not in answer.headers

    # The printed URL: a page that sets the cookie and goes on to the same address without the token.
    for path, target in ((f"/?token={token}", "/"),
                         (f"/api/jobs?state=completed&token={token}&limit=1", "/api/jobs?state=completed&limit=1"),
                         (f"//evil.example/?token={token}", "/evil.example/")):  # never to another host
        answer = dash.get(path, None)
        assert answer.status == 200 and answer.headers["Content-Type"] == "text/html; charset=utf-8", path
        assert answer.headers["Set-Cookie"] == f"queuectl-{dash.port}={token}; HttpOnly; SameSite=Strict; Path=/"
        page = answer.body.decode()
        script = re.search(r"<script nonce=[^>]+>location\.replace\((\"[^\"]*\") \+ location\.hash\);</script>", page)
        assert script and json.loads(script[1]) == target, page  # replace: no history entry with the token
        refresh = re.search(r'<meta http-equiv="refresh" content="0; url=([^"]*)">', page)
        assert refresh and html.unescape(refresh[1]) == target, page
        assert token not in page and SECRET not in page and "ok1" not in page
        assert re.search(r"script-src 'nonce-[\w-]+'", answer.headers["Content-Security-Policy"])

    # With the cookie (a browser) or the Bearer header (a script): everything.
    assert f"{SECRET}\n" in dash.get_json("/api/jobs/secret")["log_tail"]
    assert '"completed": 3' in dash.page()  # the counts, embedded
    by_script = dash.get("/api/jobs?state=completed", None, Authorization=f"Bearer {token}")
    assert by_script.status == 200 and [job["id"] for job in by_script.json()][0] == "secret"
    assert dash.get("/api/status", Cookie=f"other=1; {dash.cookie_name}=wrong; {dash.cookie_name}={token}").status \
        == 200  # among the other cookies a browser sends to 127.0.0.1

    # The token is on the owner's terminal only: not in the page, the API, the data folder, stderr.
    answers = [dash.get(path).body for path in ("/", "/api/status", "/api/jobs", "/api/jobs/secret", "/api/stats")]
    assert all(token.encode() not in body for body in answers)
    assert all(token.encode() not in path.read_bytes() for path in queue.home.rglob("*") if path.is_file())
    assert dash.stderr() == ""
    assert token.encode() not in Path(f"/proc/{dash.proc.pid}/cmdline").read_bytes()


def test_read_only_needs_the_token_too(queue: Queue, dashboards: Any) -> None:
    history(queue)
    dash = dashboards("--read-only")
    for path in ("/", "/api/status", "/api/jobs?state=dead", "/api/jobs/bad"):
        assert (dash.get(path, None).status, dash.get(path, None).body) == (403, FORBIDDEN), path
        assert dash.get(path).status == 200, path
    assert dash.post("/api/jobs/bad/retry", None).body == FORBIDDEN


def test_a_restart_makes_a_new_token_and_the_old_cookie_worthless(queue: Queue, dashboards: Any) -> None:
    history(queue)
    first = dashboards()
    old = first.token
    first.close()
    second = dashboards("--port", str(first.port))  # the same port, so the same cookie name
    assert second.port == first.port and second.cookie_name == first.cookie_name and second.token != old
    assert second.get("/api/status", old).body == FORBIDDEN
    assert second.get("/", old).status == 403
    assert second.get(f"/?token={old}", None).status == 403
    assert second.get_json("/api/status")["counts"]["dead"] == 1


def opened(dashboards: Any, tmp_path: Path, *args: str) -> tuple[Dashboard, str]:
    """`dashboard --open ARGS` with a stand-in browser (BROWSER): the dashboard, and what it was given to open."""
    recorder, seen = tmp_path / "browser.sh", tmp_path / "seen"
    recorder.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {seen}.tmp && mv {seen}.tmp {seen}\n')
    recorder.chmod(0o700)
    dash = dashboards("--open", *args, env={"BROWSER": str(recorder)})
    return dash, wait_until(lambda: seen.exists() and seen.read_text(), 15, what="the browser to be started")


def test_open_hands_the_browser_an_owner_only_file_not_the_token(queue: Queue, dashboards: Any,
                                                                tmp_path: Path) -> None:
    """`--open`: the browser's command line (which every local user can read) names a file that
    only the owner can read and that forwards to the URL; the file is gone when the dashboard stops."""
    dash, uri = opened(dashboards, tmp_path)
    assert uri.startswith("file:///") and dash.token not in uri
    opener = Path(urllib.request.url2pathname(uri[len("file://"):]))
    assert queue.home not in opener.parents
    assert opener.stat().st_mode & 0o777 == 0o600
    text = opener.read_text("utf-8")
    assert f'<meta http-equiv="refresh" content="0; url={dash.match["url"]}">' in text
    dash.proc.send_signal(signal.SIGINT)
    assert dash.proc.wait(timeout=10) == 0
    assert not opener.exists()


def test_host_header_guard(queue: Queue, dashboards: Any) -> None:
    history(queue)
    dash = dashboards()
    port = dash.port
    before = folder_bytes(queue)
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", "127.0.0.1"):
        for path in ("/", "/api/status", "/api/jobs/bad", "/?token=" + dash.token):
            answer = dash.get(path, Host=host)
            assert answer.status == 403, (host, path, answer)
            assert answer.body == b"Forbidden: this dashboard answers only to its own address.\n"
            assert "Set-Cookie" not in answer.headers
        assert dash.post("/api/jobs/bad/retry", Host=host, Origin=f"http://{host}").status == 403
    assert folder_bytes(queue) == before
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert dash.get("/api/status", Host=host).status == 200, host


def test_first_line_and_ctrl_c(queue: Queue, dashboards: Any) -> None:
    dash = dashboards()
    assert dash.match["home"] == str(queue.home)
    assert dash.match["url"] == f"http://127.0.0.1:{dash.port}/?token={dash.token}" and dash.port > 0
    assert len(dash.token) >= 40 and dashboards().token != dash.token  # 32 random bytes, new for each run
    assert dash.get_json("/api/status")["home"] == str(queue.home)
    dash.proc.send_signal(signal.SIGINT)
    assert dash.proc.wait(timeout=10) == 0
    assert dash.proc.stdout.read().decode() == "Dashboard stopped.\n"
    assert dash.stderr() == ""
    with pytest.raises(urllib.error.URLError):
        OPENER.open(dash.base + "/api/status", timeout=5)


# -- 7. many connections, and connections that say nothing ----------------------------

linux_only = pytest.mark.skipif(not Path("/proc/net/tcp").exists(),
                                reason="reads the listen queue and threads from Linux's /proc")


def listen_queue(port: int) -> int:
    """Connections the kernel holds for the dashboard to accept (a listening socket's rx_queue)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@linux_only
def test_200_concurrent_requests_are_all_answered(queue: Queue, dashboards: Any) -> None:
    history(queue)
    dash = dashboards()
    answers: list[int] = []
    threads = [threading.Thread(target=lambda: answers.append(dash.get("/api/status").status)) for _ in range(200)]
    os.kill(dash.proc.pid, signal.SIGSTOP)  # stopped, it accepts nothing: every connection waits in the backlog
    try:
        for thread in threads:
            thread.start()
        # A backlog of 5 held 6 of them and left the rest resending their SYN for up to 8 s.
        wait_until(lambda: listen_queue(dash.port) == 200, 15, what="all 200 connections held in the backlog")
    finally:
        os.kill(dash.proc.pid, signal.SIGCONT)
    started = time.monotonic()
    for thread in threads:
        thread.join(timeout=30)
    assert answers == [200] * 200
    assert time.monotonic() - started < 10


def test_a_silent_or_half_sent_connection_is_closed_after_the_idle_timeout(queue: Queue, dashboards: Any) -> None:
    dash = dashboards(env={"QUEUECTL_DASHBOARD_IDLE_TIMEOUT": "1"})  # (10 s by default)
    started = time.monotonic()
    held = []
    for sent in (b"", b"GET /api/sta", b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % dash.port):
        connection = socket.create_connection(("127.0.0.1", dash.port), timeout=15)
        connection.sendall(sent)
        held.append(connection)
    try:
        assert dash.get_json("/api/status")["home"] == str(queue.home)  # they do not hold others up
        for connection in held:
            assert connection.recv(1024) == b""  # closed by the server, nothing said
        assert 0.9 <= time.monotonic() - started < 10
        assert dash.get_json("/api/status")["home"] == str(queue.home)
    finally:
        for connection in held:
            connection.close()


@linux_only
def test_idle_connections_take_at_most_128_threads_and_then_go(queue: Queue, dashboards: Any) -> None:
    # An idle timeout well past the time 300 connections take to open (under load, up to a second):
    # with 1 s, the first handlers could time out and take more before the queue was measured.
    dash = dashboards(env={"QUEUECTL_DASHBOARD_IDLE_TIMEOUT": "2"})
    tasks = Path(f"/proc/{dash.proc.pid}/task")
    held = [socket.create_connection(("127.0.0.1", dash.port), timeout=15) for _ in range(300)]
    try:
        most, waited = 0, 0
        with selectors.DefaultSelector() as selector:
            for connection in held:
                selector.register(connection, selectors.EVENT_READ)
            deadline = time.monotonic() + 20
            while selector.get_map() and time.monotonic() < deadline:
                most = max(most, len(list(tasks.iterdir())))
                waited = max(waited, listen_queue(dash.port))
                for key, _ in selector.select(0.05):
                    assert key.fileobj.recv(1024) == b""  # closed by the server after its idle timeout
                    selector.unregister(key.fileobj)
            assert not selector.get_map(), f"{len(selector.get_map())} of 300 connections still open"
        # The main thread and 128 handlers (a finishing one may linger an instant); the rest waited their turn.
        assert 100 <= most <= 1 + 128 + 4, most
        assert waited >= 100, waited
        assert dash.get_json("/api/status")["home"] == str(queue.home)
    finally:
        for connection in held:
            connection.close()


# -- 8. where it listens, and when it refuses to start --------------------------------


def test_non_loopback_bind_warns_and_serves(queue: Queue, dashboards: Any) -> None:
    dash = dashboards("--host", "0.0.0.0")
    assert dash.match["host"] == "0.0.0.0"
    warning = dash.stderr().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning:") and "0.0.0.0" in warning[0]
    assert dash.get_json("/api/status")["home"] == str(queue.home)
    # Bound to every interface, it cannot know its names: the Host guard is off.
    assert dash.get("/api/status", Host=f"evil.example:{dash.port}").status == 200
    quiet = dashboards()  # on loopback: no warning
    assert quiet.stderr() == ""


def test_port_in_use_exits_1_with_one_line(queue: Queue) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = queue.run("dashboard", "--port", str(port), timeout=20)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(port) in lines[0], proc.stderr


@pytest.mark.parametrize("name", ["queue.json", "processed.json"])
def test_damaged_file_exits_1_before_serving(queue: Queue, name: str) -> None:
    history(queue)
    (queue.home / name).write_text('[\n{"id": "x", oops}\n]\n', "utf-8")
    proc = queue.run("dashboard", "--port", "0", timeout=20)
    assert proc.returncode == 1
    assert "Dashboard for" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(queue.home / name) in lines[0], proc.stderr


def test_file_damaged_while_serving_is_a_500_naming_it(queue: Queue, dashboards: Any) -> None:
    history(queue)
    dash = dashboards()
    assert dash.get("/api/status").status == 200
    (queue.home / "queue.json").write_text("[\n{oops}\n]\n", "utf-8")
    answer = dash.get("/api/status")
    assert answer.status == 500 and str(queue.home / "queue.json") in answer.json()["error"]
    assert dash.proc.poll() is None  # it goes on serving


# -- 9. a real browser renders the page ----------------------------------------------


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag: str, **attrs: str) -> list[Node]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if child.tag == tag and all(child.attrs.get(k.rstrip("_")) == v for k, v in attrs.items()):
                    found.append(child)
                found += child.all(tag, **attrs)
        return found


class DomParser(HTMLParser):
    """The serialized DOM as a tree of Nodes (enough for Chromium's --dump-dom)."""
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.node = Node("#document", {}, None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs), self.node)
        self.node.children.append(node)
        if tag not in self.VOID:
            self.node = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.node.children.append(Node(tag, dict(attrs), self.node))

    def handle_endtag(self, tag: str) -> None:
        node = self.node
        while node.parent is not None and node.tag != tag:
            node = node.parent
        if node.parent is not None:
            self.node = node.parent

    def handle_data(self, data: str) -> None:
        self.node.children.append(data)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def render(browser: str, url: str, profile: Path) -> tuple[str, Node]:
    """Chromium's DOM after the page's script ran (4 s of virtual time: two refreshes)."""
    proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--virtual-time-budget=4000", f"--user-data-dir={profile}", "--dump-dom", url],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # and any helper process it left behind
        except OSError:
            pass
        proc.wait()
    dom = out.decode("utf-8", "replace")
    assert proc.returncode == 0 and "</html>" in dom, (proc.returncode, dom[-500:])
    parser = DomParser()
    parser.feed(dom)
    return dom, parser.root


@needs(find_chromium() is not None, "no Chromium (chromium, chromium-browser or google-chrome) "
       "installed to render the page")
def test_page_renders_in_a_real_browser(queue: Queue, dashboards: Any, tmp_path: Path) -> None:
    browser = find_chromium()
    assert browser
    command = f'echo "<b>bold</b> {XSS}"; exit 1'
    history(queue, failing=command)
    dash = dashboards()

    # Without the token the browser gets the bare 403, and no job.
    dom, root = render(browser, dash.base + "/#dead", tmp_path / "profile")
    assert "Forbidden: open the address that `queuectl dashboard` printed" in dom
    assert "bad" not in dom and root.all("b") == [] and root.all("script") == []

    # The printed URL (with a tab to open): the token becomes a cookie, and the page renders.
    dom, root = render(browser, dash.match["url"] + "#dead", tmp_path / "profile")
    assert len(root.all("b")) == 6  # the six counts; no <b> element came from the command
    counts = {b.attrs["data-state"]: b.text() for b in root.all("b")}
    assert counts == {"pending": "0", "processing": "0", "failed": "0", "completed": "2", "dead": "1",
                      "cancelled": "0"}
    assert '<b data-state="completed">2</b>' in dom and '<b data-state="dead">1</b>' in dom
    assert all("alert" not in s.text() for s in root.all("script")) and len(root.all("script")) == 2
    [table] = root.all("table", id="jobs")
    rows = table.all("tr", class_="job")
    assert [[td.text() for td in row.all("td")][:3] for row in rows] == [["bad", "dead", "1"]]
    [cell] = rows[0].all("td", class_="cmd")
    assert cell.text() == command and cell.attrs["title"] == command and cell.all("b") == []
    assert "&lt;b&gt;bold&lt;/b&gt;" in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    buttons = [button.text() for button in table.all("button")]
    assert buttons == ["retry all", "retry"]
    assert [b.text() for b in root.all("button", class_="on")] == ["dead (1)"]
    assert [s.text() for s in root.all("span", id="live")] == ["live"]  # its API calls all worked
    assert [d.text() for d in root.all("div", id="message")] == [""]
    assert dash.token not in dom

    # A link to one job opens its detail: the output, markup and all, shown as text. (The cookie
    # lasts as long as the browser, so a new browser signs in with the printed URL again.)
    dom, root = render(browser, dash.match["url"] + "#dead/bad", tmp_path / "profile")
    [detail] = root.all("section", id="detail")
    assert "hidden" not in detail.attrs
    assert [h.text() for h in detail.all("h2")][0] == "Job bad"
    [output] = detail.all("pre")
    assert f"<b>bold</b> {XSS}\n" in output.text()
    assert len(root.all("b")) == 6 and len(root.all("script")) == 2
    assert [row.all("td")[0].text() for row in root.all("tr", class_="job selected")] == ["bad"]

    # --read-only: the same page without a single action button.
    read_only = dashboards("--read-only")
    dom, root = render(browser, read_only.match["url"] + "#dead", tmp_path / "profile3")
    [table] = root.all("table", id="jobs")
    assert [[td.text() for td in row.all("td")][:2] for row in table.all("tr", class_="job")] == [["bad", "dead"]]
    assert table.all("button") == [] and root.all("button", class_="action") == []


class Browser:
    """Headless Chromium driven over its DevTools pipe (fd 3 in, fd 4 out, NUL-framed JSON), to
    click in the page as a user does; stdlib only."""

    def __init__(self, browser: str, url: str, profile: Path) -> None:
        to_browser, self.out = os.pipe()
        self.inp, from_browser = os.pipe()

        def pipe_fds() -> None:  # in the child: its ends of the pipes become fds 3 and 4
            read_end, write_end = os.dup(to_browser), os.dup(from_browser)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--remote-debugging-pipe", f"--user-data-dir={profile}", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(3, 4),
                                     preexec_fn=pipe_fds, start_new_session=True)
        os.close(to_browser)
        os.close(from_browser)
        self.buffer, self.next_id, self.session = b"", 0, None
        page = wait_until(lambda: [t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page"],
                          15, what="the browser's page")[0]
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def call(self, method: str, **params: Any) -> Any:
        answer = self.send(method, **params)
        assert "error" not in answer, answer
        return answer["result"]

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self.out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 15
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self.next_id:
                    return answer
            with selectors.DefaultSelector() as selector:
                selector.register(self.inp, selectors.EVENT_READ)
                assert selector.select(max(0.0, deadline - time.monotonic())), f"no answer to {method}"
            chunk = os.read(self.inp, 1 << 20)
            assert chunk, "the browser went away"
            self.buffer += chunk

    def evaluate(self, expression: str) -> Any:
        """The expression's value in the page; None while the page is between two addresses."""
        answer = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return None if "error" in answer else answer["result"]["result"].get("value")

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()
        os.close(self.out)
        os.close(self.inp)


@needs(find_chromium() is not None, "no Chromium (chromium, chromium-browser or google-chrome) "
       "installed to click in the page")
def test_buttons_open_and_restart_in_a_real_browser(queue: Queue, dashboards: Any, tmp_path: Path) -> None:
    """The page's own POSTs (the cookie, its Origin) pass the checks that refuse everyone else's."""
    history(queue)
    queue.ok("enqueue", "--id", "later", "--command", "echo later", "--delay", "1h")
    dash = dashboards()
    browser = Browser(find_chromium() or "", dash.match["url"] + "#dead", tmp_path / "profile")
    try:
        rows = "[...document.querySelectorAll('#jobs tr.job')]"
        wait_until(lambda: browser.evaluate(f"{rows}.map(r => r.cells[0].textContent).join()") == "bad", 15,
                   what="the dead tab with job bad")
        assert browser.evaluate("location.href") == f"{dash.base}/#dead"  # the token has left the address bar
        assert browser.evaluate("history.length") == 1  # and the history
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: not even the page's script sees it
        browser.evaluate(f"{rows}[0].querySelector('button.action').click()")  # its "retry"
        wait_until(lambda: queue.json("show", "bad")["state"] == "pending", 15, what="bad to be retried")
        assert queue.json("show", "bad")["attempts"] == 0
        browser.evaluate("document.querySelector('#tabs button').click()")  # the pending tab
        wait_until(lambda: browser.evaluate(f"{rows}.map(r => r.cells[0].textContent).sort().join()") == "bad,later",
                   15, what="the pending tab")
        browser.evaluate(f"{rows}.find(r => r.cells[0].textContent === 'later').querySelector('button').click()")
        wait_until(lambda: queue.json("show", "later")["state"] == "cancelled", 15, what="later to be cancelled")
        assert browser.evaluate("document.getElementById('message').textContent") == ""
        assert browser.evaluate("document.getElementById('live').textContent") == "live"
    finally:
        browser.close()

    # --open: from the owner-only file the browser is handed, the same cookie flow signs in (a 303
    # would lose the SameSite=Strict cookie after a file:// page).
    read_only, uri = opened(dashboards, tmp_path, "--read-only")
    browser = Browser(find_chromium() or "", uri, tmp_path / "profile2")
    try:
        wait_until(lambda: browser.evaluate("document.querySelector('b[data-state=cancelled]')?.textContent") == "1",
                   15, what="the page opened through the file (later, cancelled above, counted)")
        assert browser.evaluate("location.href") == f"{read_only.base}/"

        # After a restart on the same port the old cookie is worthless: the page says so.
        read_only.close()
        again = dashboards("--port", str(read_only.port))
        wait_until(lambda: browser.evaluate("document.getElementById('live').textContent").startswith(
            "not updating: Forbidden: open the address"), 15, what="the page to say it needs the new address")
        assert again.get("/api/status", None).status == 403
    finally:
        browser.close()
