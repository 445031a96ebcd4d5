"""A throwaway PostgreSQL server (the Debian package's binaries) for tests of the results store.

`initdb` + `pg_ctl start` in a fresh folder, listening on a free 127.0.0.1 port with trust
authentication and fsync off (test data is disposable). PostgreSQL refuses to run as root, so when the
tests run as root the server runs as the `postgres` system user (created by the Debian package) via
`runuser`, in a folder under /tmp that user can enter.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from backtest_devtools.errors import ClusterError

INSTALL_HINT = "install it with `make deps-system` (apt-get install postgresql)"


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin holding initdb and pg_ctl."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0))
    for folder in reversed(candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in its own folder; `url` is a SQLAlchemy URL for the `postgres` database."""

    def __init__(self, bin_dir: Path | None = None, host: str = "127.0.0.1", clients: tuple[str, ...] = ()) -> None:
        """`host` is the address it listens on (the real node's address lets pods reach it); `clients` are
        extra CIDRs allowed in without a password (pg_hba), e.g. the real node's pod network."""
        found = bin_dir or find_bin_dir()
        if found is None:
            raise ClusterError("postgres", f"initdb/pg_ctl not found under /usr/lib/postgresql; {INSTALL_HINT}")
        self.bin_dir = found
        self.port = _free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="backtest-pg-"))
        self.data_dir = self.workdir / "data"
        self.log = self.workdir / "postgres.log"
        self.user = "postgres"
        self.host, self.clients = host, clients
        self.url = f"postgresql://postgres@{host}:{self.port}/postgres"
        self._as_root = os.geteuid() == 0

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.workdir)

    def start(self, timeout: float = 30.0) -> PostgresServer:
        if self._as_root:
            try:
                owner = pwd.getpwnam(self.user)
            except KeyError:
                raise ClusterError("postgres", f"system user {self.user!r} missing; {INSTALL_HINT}") from None
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
        init = self._run("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        if init.returncode != 0:
            raise ClusterError("postgres", f"initdb failed: {init.stderr.strip()[-500:]}")
        with (self.data_dir / "pg_hba.conf").open("a") as hba:
            hba.writelines(f"host all all {cidr} trust\n" for cidr in self.clients)
        listen = f"-c listen_addresses={self.host}"
        options = f"-p {self.port} -k {self.workdir} {listen} -c fsync=off -c full_page_writes=off"
        started = self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
        )
        if started.returncode != 0:
            log = self.log.read_text(errors="replace")[-1000:] if self.log.exists() else started.stderr
            raise ClusterError("postgres", f"pg_ctl start failed: {log.strip()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((self.host, self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise ClusterError("postgres", f"not accepting connections on port {self.port} after {timeout:.0f}s")

    def create_database(self, name: str) -> str:
        """A fresh database on this server; returns its URL."""
        result = self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", "postgres", name)
        if result.returncode != 0:
            raise ClusterError("postgres", f"createdb {name} failed: {result.stderr.strip()}")
        return f"postgresql://postgres@{self.host}:{self.port}/{name}"

    def stop(self, keep: bool = False) -> None:
        if self.data_dir.exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
