"""Test infrastructure for the PostgreSQL store: what a test needs to break a database on purpose.

- a brand-new empty database per test (`fresh_database`, the `pg_url` fixture in conftest.py),
  copied from a per-session template into which `queuectl_pg.install_schema` is installed once;
- `Proxy`, a TCP proxy that can stall a connection like a cut cable (`blackhole`) or reset it (`cut`);
- `on_host`, a process that believes it runs on another machine (its own hostname);
- `restart_server`, a real restart of the server, and `terminate_backends`, a kill of its connections.

    def test_a_worker_survives_a_cut_cable(pg_url):
        with Proxy.to(pg_url) as proxy:
            store = open_store(proxy.url(pg_url))
            proxy.blackhole()
            ...

psycopg2 is imported only where a database is touched, so the folder store's tests run without it.
"""

from __future__ import annotations

import itertools
import os
import re
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from conftest import IN_CI, POSTGRES_URL, postgres_reachable, process_gone, wait_until

if TYPE_CHECKING:
    from psycopg2.extensions import connection as Connection


# ---------------------------------------------------------------------------------------------
# Connections and URLs
# ---------------------------------------------------------------------------------------------

def with_database(url: str, dbname: str) -> str:
    """The same server and credentials, another database (the URL's path)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def with_address(url: str, host: str, port: int) -> str:
    """The URL with its host and port replaced; user, password, database and parameters kept."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def admin_connection(url: str = POSTGRES_URL) -> Connection:
    """An autocommit connection: CREATE and DROP DATABASE refuse to run inside a transaction."""
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=5, application_name="queuectl-tests-admin")
    conn.autocommit = True
    return conn


def admin(sql: Any, params: tuple[Any, ...] = (), url: str = POSTGRES_URL) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of its own, closed at once (a connection left open to a
    template would stop CREATE DATABASE from copying it); returns its rows, if any."""
    conn = admin_connection(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def require_server(url: str = POSTGRES_URL) -> None:
    """Skip the test (one line saying why) when there is no PostgreSQL to test against; in CI,
    where .ci/run starts the server, fail instead: a missing server there is a broken build."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        reason = "psycopg2 is not installed (pip install psycopg2-binary)"
    else:
        if postgres_reachable(url):
            return
        reason = f"no PostgreSQL server answers at {url} (set QUEUECTL_TEST_POSTGRES)"
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------
# A database per test
# ---------------------------------------------------------------------------------------------

# Names carry the pid of the pytest process that made them: two runs at once never collide, and
# a database whose pid is dead was left by a crashed run (drop_stale_databases).
TEMPLATE_PREFIX = "queuectl_tmpl_"
DATABASE_PREFIX = "queuectl_t_"
_OWNED_NAME = re.compile(r"^queuectl_(?:t|tmpl)_(\d+)(?:_|$)")
_numbers = itertools.count(1)
_made_here: set[str] = set()


def _statement(template: str, *names: str) -> Any:
    """SQL with database names quoted as identifiers (CREATE DATABASE takes no parameters)."""
    from psycopg2 import sql

    return sql.SQL(template).format(*(sql.Identifier(name) for name in names))


def create_database(name: str, template: str = "template0", url: str = POSTGRES_URL) -> str:
    """CREATE DATABASE name TEMPLATE template; returns its URL.

    Measured on the development machine (PostgreSQL 15, a small template, fsync on): about
    0.16 s to create (0.09 to 0.18 s) and 0.13 s to drop, with PostgreSQL 15's default strategy
    WAL_LOG. STRATEGY FILE_COPY took 1.6 s: it forces two checkpoints, so it is not used."""
    admin(_statement("CREATE DATABASE {} TEMPLATE {}", name, template), url=url)
    _made_here.add(name)
    return with_database(url, name)


def drop_database(name: str, url: str = POSTGRES_URL) -> None:
    """Drop it even if a test left connections open (WITH (FORCE) ends them first)."""
    admin(_statement("DROP DATABASE IF EXISTS {} WITH (FORCE)", name), url=url)
    _made_here.discard(name)


def stale_databases(url: str = POSTGRES_URL) -> list[str]:
    """Databases made by this module in a pytest run that is gone: their pid is dead, or is ours
    but this process did not make them (a crashed earlier run that had the same pid).
    Pids are judged on this machine, which is right when the server is local (as here and in CI)."""
    names = [row[0] for row in admin("SELECT datname FROM pg_database WHERE datname ~ '^queuectl_(t|tmpl)_[0-9]'",
                                     url=url)]
    stale = []
    for name in names:
        match = _OWNED_NAME.match(name)
        if not match:
            continue
        pid = int(match.group(1))
        if process_gone(pid) or (pid == os.getpid() and name not in _made_here):
            stale.append(name)
    return sorted(stale)


def drop_stale_databases(url: str = POSTGRES_URL) -> list[str]:
    """Drop what crashed runs left behind; returns the names dropped."""
    stale = stale_databases(url)
    for name in stale:
        drop_database(name, url)
    return stale


def prepare_template(url: str) -> None:
    """Install the PostgreSQL store's schema into the template once a session, so each test's
    database is a cheap copy of a ready one. Until queuectl_pg exists (or has no
    install_schema(url)), the template stays empty."""
    try:
        import queuectl_pg
    except ModuleNotFoundError as error:
        if error.name != "queuectl_pg":  # queuectl_pg is there but cannot import: say so
            raise
        return
    install_schema = getattr(queuectl_pg, "install_schema", None)
    if install_schema is not None:
        install_schema(url)


@contextmanager
def template_database(name: str | None = None, url: str = POSTGRES_URL) -> Iterator[str]:
    """A session's template: made empty from template0, prepared by prepare_template, dropped at
    the end. Yields its name. Leftovers of crashed runs are dropped first."""
    require_server(url)
    drop_stale_databases(url)
    name = name or f"{TEMPLATE_PREFIX}{os.getpid()}"
    template_url = create_database(name, "template0", url)
    try:
        prepare_template(template_url)
        # A connection the schema installer left open would make every CREATE DATABASE fail.
        terminate_backends(template_url)
        yield name
    finally:
        drop_database(name, url)


@contextmanager
def fresh_database(template: str, url: str = POSTGRES_URL) -> Iterator[str]:
    """A brand-new database copied from the template, dropped afterwards even with connections
    still open. Yields its postgresql:// URL."""
    name = f"{DATABASE_PREFIX}{os.getpid()}_{next(_numbers)}"
    database_url = create_database(name, template, url)
    try:
        yield database_url
    finally:
        drop_database(name, url)


def terminate_backends(url: str, application_name: str | None = None) -> int:
    """End every connection to the URL's database (only those with this application_name, if
    given), as an administrator or a crashed server would; returns how many were ended. Waits up
    to 5 s for each to be gone, so the caller can assert on what its connections see next."""
    conn = admin_connection(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND (%s::text IS NULL OR application_name = %s)",
                (application_name, application_name))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# A proxy that can cut the cable
# ---------------------------------------------------------------------------------------------

class ProxyError(RuntimeError):
    """The proxy's thread did not do what it was asked in time."""


@dataclass
class _Request:
    """A verb for the proxy's thread, and how the caller learns it is done."""

    verb: str
    done: threading.Event = field(default_factory=threading.Event)
    answer: Any = None


class _Link:
    """One client connection and its connection to the target, with what is still to be written
    each way (sockets are non-blocking: a side that stops reading never stalls the others)."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.pending = {client: bytearray(), server: bytearray()}  # bytes waiting to be written to that socket

    def other(self, sock: socket.socket) -> socket.socket:
        return self.server if sock is self.client else self.client

    def close(self, reset: bool) -> None:
        for sock in (self.client, self.server):
            if reset:  # linger 0: close sends RST, not FIN
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            sock.close()


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of host:port, to fail the network under a client.

    blackhole() stops forwarding both ways but keeps every socket open, as a cut cable does: the
    client's writes succeed and it waits for an answer that never comes. New connections are
    accepted and then stall too. resume() forwards again, including what was held back. cut()
    resets every connection. close() cuts and stops; no thread or socket survives it.

    Unlike a real cut cable, this machine's kernel still acknowledges the client's packets and
    answers its TCP keepalives, so keepalives and tcp_user_timeout do not notice a blackhole, and
    statement_timeout cannot (the query never reaches the server): only a deadline kept by the
    client does, such as connect_timeout for a new connection or a thread joined with a timeout.

    One daemon thread moves the bytes for all connections; each verb is carried out by that
    thread before the call returns, so a test never races it."""

    BUFFER = 65536

    def __init__(self, host: str = "127.0.0.1", port: int = 5432) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._links: list[_Link] = []
        self._forwarding = True
        self._stopping = False
        self._requests: list[_Request] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"Proxy:{self.port}", daemon=True)
        self._thread.start()

    @classmethod
    def to(cls, url: str) -> Proxy:
        """A proxy in front of the server of a postgresql:// URL."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432)

    def url(self, base_url: str) -> str:
        """base_url pointed at the proxy instead of the server."""
        return with_address(base_url, "127.0.0.1", self.port)

    def blackhole(self) -> None:
        """Stop forwarding either way, keeping every connection open."""
        self._ask("blackhole")

    def resume(self) -> None:
        """Forward again, held-back bytes first."""
        self._ask("resume")

    def cut(self) -> None:
        """Reset every open connection (both ends see RST); later connections are forwarded."""
        self._ask("cut")

    def close(self) -> None:
        """Reset every connection, stop listening and join the thread. Safe to call twice."""
        if self._thread.is_alive():
            self._ask("close")
            self._thread.join(10)
        if self._thread.is_alive():
            raise ProxyError(f"proxy thread on port {self.port} did not stop")
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def connections(self) -> int:
        """How many client connections are open through the proxy."""
        return int(self._ask("count"))

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ask(self, verb: str, timeout: float = 10.0) -> Any:
        """Hand a verb to the proxy's thread and wait until it has been carried out."""
        request = _Request(verb)
        with self._lock:
            if self._stopping:
                raise ProxyError("the proxy is closed")
            self._requests.append(request)
        self._wake_w.send(b"x")
        if not request.done.wait(timeout):
            raise ProxyError(f"proxy thread did not {verb} within {timeout} s")
        return request.answer

    def _carry_out(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        for request in requests:
            verb = request.verb
            if verb == "blackhole":
                self._forwarding = False
            elif verb == "resume":
                self._forwarding = True
            elif verb in ("cut", "close"):
                for link in self._links:
                    link.close(reset=True)
                self._links.clear()
                if verb == "close":
                    with self._lock:
                        self._stopping = True
            elif verb == "count":
                request.answer = len(self._links)
            request.done.set()

    def _run(self) -> None:
        while not self._stopping:
            poller = select.poll()
            owners: dict[int, tuple[socket.socket, _Link | None]] = {
                self._wake_r.fileno(): (self._wake_r, None), self._listener.fileno(): (self._listener, None)}
            poller.register(self._wake_r, select.POLLIN)
            poller.register(self._listener, select.POLLIN)
            if self._forwarding:
                for link in self._links:
                    for sock in (link.client, link.server):
                        # read from a side only while what it sent before has been passed on
                        events = select.POLLIN if not link.pending[link.other(sock)] else 0
                        events |= select.POLLOUT if link.pending[sock] else 0
                        if events:
                            poller.register(sock, events)
                            owners[sock.fileno()] = (sock, link)
            for fd, events in poller.poll():
                sock, link = owners[fd]
                if sock is self._wake_r:
                    self._drain_wake()
                elif sock is self._listener:
                    self._accept()
                elif link in self._links:
                    self._pump(link, sock, events)
            self._carry_out()
        for link in self._links:
            link.close(reset=True)
        self._links.clear()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._links.append(_Link(client, server))

    def _pump(self, link: _Link, sock: socket.socket, events: int) -> None:
        """Move bytes for one ready socket; a closed or failed side closes the link."""
        try:
            if events & select.POLLOUT and link.pending[sock]:
                sent = sock.send(link.pending[sock])
                del link.pending[sock][:sent]
            if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                data = sock.recv(self.BUFFER)
                if not data:
                    raise ConnectionResetError("peer closed")
                link.pending[link.other(sock)] += data
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            other = link.other(sock)
            try:  # pass on what the side said before it left (a Terminate message, an error)
                other.setblocking(True)
                other.settimeout(1)
                other.sendall(link.pending[other])
            except OSError:
                pass
            self._links.remove(link)
            link.close(reset=False)


# ---------------------------------------------------------------------------------------------
# A second host
# ---------------------------------------------------------------------------------------------

def unshare_refusal() -> str | None:
    """Why this machine cannot give a process its own hostname (None if it can): it needs
    unshare(1) and the right to make a UTS namespace (root, or CAP_SYS_ADMIN)."""
    try:
        proc = subprocess.run(["unshare", "--uts", "hostname", "queuectl-probe"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot run unshare: {error}"
    if proc.returncode != 0:
        return f"unshare --uts is not permitted here: {proc.stderr.decode(errors='replace').strip()}"
    return None


def on_host(name: str, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Run argv as if on a machine called `name`: in its own UTS namespace, so gethostname()
    there says `name` while this process's hostname is unchanged. Only the name differs: it
    shares this machine's pids, files and network (a worker there can still signal ours)."""
    script = 'hostname "$0" && exec "$@"'
    return subprocess.Popen(["unshare", "--uts", "--", "sh", "-c", script, name, *argv], **popen_kwargs)


# ---------------------------------------------------------------------------------------------
# The server itself
# ---------------------------------------------------------------------------------------------

def server_version() -> str:
    """The local cluster's major version, as pg_ctlcluster wants it (Debian's /etc/postgresql/<v>)."""
    versions = sorted(Path("/etc/postgresql").iterdir(), key=lambda path: path.name)
    if not versions:
        raise FileNotFoundError("no cluster under /etc/postgresql")
    return versions[0].name


def server_answers(url: str = POSTGRES_URL) -> bool:
    """A query succeeds: more than postgres_reachable, which a server still starting up passes."""
    try:
        admin("SELECT 1", url=url)
    except Exception:  # psycopg2.OperationalError and friends, while the server is down
        return False
    return True


def restart_server(url: str = POSTGRES_URL, timeout: float = 60.0) -> float:
    """Restart the local cluster (every connection is dropped, as in a crash and recovery) and
    wait until it answers queries again; returns how many seconds that took. Other users of the
    server lose their connections too: run only where that is agreed (CI, or on request)."""
    started = time.monotonic()
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", server_version(), "main", "restart"],
                   check=True, capture_output=True, timeout=timeout)
    wait_until(lambda: server_answers(url), timeout, interval=0.1, what=f"PostgreSQL at {url} to answer again")
    return time.monotonic() - started
