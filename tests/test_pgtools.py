"""The PostgreSQL test infrastructure (tests/pgtools.py) proves itself against the real server:
a database per test, a proxy that cuts the cable, a second hostname, a server restart, killed
connections. Nothing is left behind: no database, thread, socket or process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pgtools
import pytest
from conftest import IN_CI, POSTGRES_URL, needs, wait_until
from pgtools import Proxy


def connect(url: str, **kwargs: Any) -> Any:
    import psycopg2

    return psycopg2.connect(url, connect_timeout=5, **kwargs)


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run and commit one statement on a connection of its own."""
    conn = connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def database_exists(name: str) -> bool:
    return bool(pgtools.admin("SELECT 1 FROM pg_database WHERE datname = %s", (name,)))


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


class QueryInThread:
    """A query running in a thread, so the test can watch it hang and keep its own deadline."""

    def __init__(self, conn: Any, sql: str) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(conn, sql), daemon=True)
        self.thread.start()

    def _run(self, conn: Any, sql: str) -> None:
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                self.result = cur.fetchall()
        except BaseException as error:  # handed to the test
            self.error = error

    def finished_within(self, seconds: float) -> bool:
        self.thread.join(seconds)
        return not self.thread.is_alive()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    """A proxy in front of the tests' server, checked to leave no thread or socket behind."""
    pgtools.require_server()
    threads, fds = threading.active_count(), open_fds()
    with Proxy.to(POSTGRES_URL) as proxy:
        yield proxy
    assert threading.active_count() == threads
    assert open_fds() <= fds


# --- a database per test ---------------------------------------------------------------------

@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_gets_a_brand_new_empty_database_of_its_own(pg_url: str, pg_template: str, turn: int) -> None:
    name = pgtools.database_of(pg_url)
    assert name.startswith(f"queuectl_t_{os.getpid()}_") and name != pg_template
    # Both turns find it empty and leave a table: neither sees the other's.
    assert query(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    conn = connect(pg_url)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE left_by_a_test (turn int)")
    conn.close()


def test_a_test_database_is_dropped_even_with_a_connection_left_open(pg_template: str) -> None:
    with pgtools.fresh_database(pg_template) as url:
        name = pgtools.database_of(url)
        left_open = connect(url)
        assert database_exists(name)
    assert not database_exists(name)
    assert _is_broken(left_open)
    left_open.close()


def _is_broken(conn: Any) -> bool:
    import psycopg2

    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    except psycopg2.OperationalError:
        return True
    return False


def test_the_template_gets_the_store_schema_once_when_queuectl_pg_has_install_schema(
        pg_template: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    installs: list[str] = []

    def install_schema(url: str) -> None:
        installs.append(url)
        query(url, "CREATE TABLE jobs (id text PRIMARY KEY); SELECT 1")

    monkeypatch.setitem(sys.modules, "queuectl_pg", types.SimpleNamespace(install_schema=install_schema))
    template = f"queuectl_tmpl_{os.getpid()}_schema"
    with pgtools.template_database(template) as name:
        with pgtools.fresh_database(name) as first, pgtools.fresh_database(name) as second:
            for url in (first, second):
                assert query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == [("jobs",)]
    assert len(installs) == 1 and pgtools.database_of(installs[0]) == template
    assert not database_exists(template)


def test_databases_left_by_a_crashed_run_are_dropped_and_ours_are_kept(pg_url: str, pg_template: str) -> None:
    crashed = subprocess.Popen(["true"])
    crashed.wait()  # its pid is dead now, like a pytest run that crashed
    leftover = f"queuectl_t_{crashed.pid}_7"
    pgtools.create_database(leftover)
    try:
        assert leftover in pgtools.drop_stale_databases()  # (a run beside this one may find its own too)
        assert not database_exists(leftover)
        assert database_exists(pgtools.database_of(pg_url)) and database_exists(pg_template)
    finally:
        pgtools.drop_database(leftover)


# --- a proxy that cuts the cable -------------------------------------------------------------

def test_a_query_through_the_proxy_is_answered(proxy: Proxy) -> None:
    url = proxy.url(POSTGRES_URL)
    assert f"@127.0.0.1:{proxy.port}/" in url
    assert query(url, "SELECT 42") == [(42,)]
    wait_until(lambda: proxy.connections() == 0, 5, what="the closed connection to leave the proxy")


def test_the_proxy_url_keeps_everything_but_the_address() -> None:
    with Proxy("127.0.0.1", 1) as proxy:
        assert proxy.url("postgresql://u:p@db.example:6543/q?sslmode=disable&application_name=w") == \
            f"postgresql://u:p@127.0.0.1:{proxy.port}/q?sslmode=disable&application_name=w"


def test_a_blackholed_connection_stops_answering_and_answers_again_on_resume(proxy: Proxy) -> None:
    conn = connect(proxy.url(POSTGRES_URL), options="-c statement_timeout=0",
                   keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=1, tcp_user_timeout=500)
    try:
        assert QueryInThread(conn, "SELECT 1").finished_within(5)
        proxy.blackhole()
        stalled = QueryInThread(conn, "SELECT 2")
        # Keepalives and tcp_user_timeout do not notice: this machine's kernel still acknowledges.
        assert not stalled.finished_within(1.0)
        proxy.resume()
        assert stalled.finished_within(5) and stalled.result == [(2,)], stalled.error
    finally:
        conn.close()


def test_a_cut_resets_a_stalled_connection_and_the_client_gets_an_operational_error(proxy: Proxy) -> None:
    import psycopg2

    conn = connect(proxy.url(POSTGRES_URL), options="-c statement_timeout=0")
    try:
        proxy.blackhole()
        stalled = QueryInThread(conn, "SELECT 1")
        assert not stalled.finished_within(0.2)
        proxy.cut()
        assert stalled.finished_within(5)
        assert isinstance(stalled.error, psycopg2.OperationalError), stalled.error
        assert conn.closed  # psycopg2 marks it closed: a store must open a new one
    finally:
        conn.close()
    proxy.resume()
    assert query(proxy.url(POSTGRES_URL), "SELECT 3") == [(3,)]  # the proxy itself carries on


def test_a_closed_proxy_refuses_connections_and_leaves_nothing_behind() -> None:
    pgtools.require_server()
    threads, fds = threading.active_count(), open_fds()
    proxy = Proxy.to(POSTGRES_URL)
    conn = connect(proxy.url(POSTGRES_URL))
    proxy.blackhole()
    proxy.close()
    proxy.close()
    conn.close()
    assert threading.active_count() == threads and open_fds() == fds
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()


# --- a second host ---------------------------------------------------------------------------

_unshare_refusal = pgtools.unshare_refusal()


@needs(_unshare_refusal is None, _unshare_refusal or "")
def test_a_process_on_another_host_sees_its_own_hostname() -> None:
    ours = socket.gethostname()
    proc = pgtools.on_host("queuectl-host-b", [sys.executable, "-c", "import socket; print(socket.gethostname())"],
                           stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and out.strip() == "queuectl-host-b"
    assert socket.gethostname() == ours and ours != "queuectl-host-b"


# --- the server itself -----------------------------------------------------------------------

def test_terminate_backends_ends_the_connections_to_one_database(pg_url: str) -> None:
    import psycopg2

    workers = [connect(pg_url, application_name="queuectl-worker") for _ in range(2)]
    dashboard = connect(pg_url, application_name="queuectl-dashboard")
    elsewhere = connect(POSTGRES_URL, application_name="queuectl-worker")
    try:
        assert pgtools.terminate_backends(pg_url, application_name="queuectl-worker") == 2
        for conn in workers:
            with pytest.raises(psycopg2.OperationalError):
                conn.cursor().execute("SELECT 1")
        assert QueryInThread(dashboard, "SELECT 1").finished_within(5)
        assert QueryInThread(elsewhere, "SELECT 1").finished_within(5)  # another database: untouched
        assert pgtools.terminate_backends(pg_url) == 1
    finally:
        for conn in [*workers, dashboard, elsewhere]:
            conn.close()


RESTART_AGREED = IN_CI or os.environ.get("QUEUECTL_TEST_RESTART") == "1"


@pytest.mark.skipif(not RESTART_AGREED, reason="restarts the shared server: set QUEUECTL_TEST_RESTART=1 (CI does)")
@pytest.mark.skipif(not Path("/etc/postgresql").is_dir() and not IN_CI, reason="no local Debian PostgreSQL cluster")
def test_a_restarted_server_drops_connections_and_answers_again(pg_url: str) -> None:
    import psycopg2

    before = connect(pg_url)
    try:
        seconds = pgtools.restart_server()
        assert seconds < 60
        with pytest.raises(psycopg2.OperationalError):
            before.cursor().execute("SELECT 1")
        assert query(pg_url, "SELECT 1") == [(1,)]
    finally:
        before.close()
