"""A throw-away PostgreSQL cluster for tests: local server binaries, 127.0.0.1, no Docker, no network.

`throwaway_postgres()` runs `initdb` into a temporary directory, starts the server on a free port and yields a
SQLAlchemy URL; `new_database()` adds an isolated database to any server a test may use.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy

BIN_ENV = "VITPRUNE_PG_BIN"
SUPERUSER = "vitprune"
DATABASE = "vitprune_test"
# The server refuses to run as root, so under root the cluster is owned and run by this unprivileged account.
UNPRIVILEGED_USER = "nobody"


def find_bin_dir() -> Path | None:
    """`$VITPRUNE_PG_BIN`, else `pg_config --bindir`, else the newest Debian `/usr/lib/postgresql/*/bin`."""
    candidates: list[str] = []
    if os.environ.get(BIN_ENV):
        candidates.append(os.environ[BIN_ENV])
    if shutil.which("pg_config"):
        result = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(result.stdout.strip())

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", Path(path).parent.name))

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for candidate in candidates:
        if candidate and all((Path(candidate) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    return None


def _as_server_user(cmd: list[str]) -> list[str]:
    """Wrap `cmd` so it runs unprivileged when we are root.

    `runuser` (util-linux) switches user without PAM password prompts and keeps the environment; `su` is the
    fallback where it is missing. Either way the account needs no login shell or home directory.
    """
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", UNPRIVILEGED_USER, "--", *cmd]
    return ["su", UNPRIVILEGED_USER, "-s", "/bin/sh", "-c", shlex.join(cmd)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd: list[str], cwd: Path) -> None:
    # cwd is the temp dir: the unprivileged user may not be allowed into the caller's working directory.
    result = subprocess.run(_as_server_user(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


class Cluster:
    """A PostgreSQL cluster in a temporary directory, on 127.0.0.1; it can be stopped and started again."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="vitprune-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port: int | None = None
        if os.geteuid() == 0:
            shutil.chown(self.root, user=UNPRIVILEGED_USER)
        # --no-sync and fsync=off: the data is thrown away, so durability only costs time (initdb ~2 s -> ~1 s).
        initdb = [str(bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", SUPERUSER, "--encoding", "UTF8"]
        _run([*initdb, "--no-sync"], self.root)

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server (on the port it had before, if it ran before)."""
        for attempt in range(3):  # a fresh port can be taken between probing and binding it
            port = self.port or _free_port()
            options = f"-h 127.0.0.1 -p {port} -k {self.root} -c fsync=off -c full_page_writes=off"
            try:
                pg_ctl = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log)]
                _run([*pg_ctl, "-w", "start"], self.root)
                self.port = port
                return
            except RuntimeError as error:
                server_log = self.log.read_text(errors="replace") if self.log.exists() else ""
                if attempt == 2 or "could not bind" not in server_log or self.port:
                    raise RuntimeError(f"{error}\nserver log:\n{server_log}") from None

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():  # a pid file means a server may be up
            _run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop"], self.root)


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A started cluster; stopped and every file deleted at the end."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; set {BIN_ENV} to their dir")
    cluster = Cluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        finally:
            shutil.rmtree(cluster.root, ignore_errors=True)


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a fresh cluster, yield the URL of an empty database on it, then stop it and delete every file."""
    with throwaway_cluster() as cluster:
        yield new_database(cluster.admin_url, DATABASE)


def _check_name(name: str) -> None:
    # Names are spliced into SQL (CREATE DATABASE takes no bind parameters), so allow only plain identifiers.
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"unsafe database name {name!r}")


def new_database(admin_url: str, name: str) -> str:
    """Create database `name` on the server behind `admin_url` and return a URL for it."""
    _check_name(name)
    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return engine.url.set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database `name`, disconnecting any sessions still using it (PostgreSQL 13+)."""
    _check_name(name)
    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()
