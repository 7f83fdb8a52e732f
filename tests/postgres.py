"""A real PostgreSQL server for the tests: initdb in a temporary folder, a Unix socket there,
no TCP. Started once per session; ``stop``/``start`` make an outage. Debian keeps the server
binaries off PATH (``/usr/lib/postgresql/<version>/bin``) and refuses to run them as root, so
as root they run as the ``postgres`` user."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path


def server_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None where no server is installed."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if all(Path(candidate, p).is_file() for p in ("pg_ctl", "initdb", "createdb")):
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, root: Path) -> None:
        bin_dir = server_binaries()
        assert bin_dir is not None
        self.bin = bin_dir
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "socket"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        for folder in (self.root, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
            if self.as_root:
                shutil.chown(folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.root / "server.log"), "-o",
                  f"-k {self.socket_dir} -p {self.port} -c listen_addresses='' -c fsync=off", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def password_role(self, role: str, password: str) -> None:
        """A login role whose password the server checks (the rest of the server trusts every role)."""
        import psycopg

        self._run("psql", "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                  "-c", f"DROP ROLE IF EXISTS {role}", "-c", f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        hba = self.data / "pg_hba.conf"
        rule = f"local all {role} scram-sha-256\n"
        if rule not in hba.read_text():
            hba.write_text(rule + hba.read_text())  # the first matching line wins
            self._run("pg_ctl", "-D", str(self.data), "reload")
        deadline = time.monotonic() + 30  # the server rereads its rules when it gets to it
        while True:
            try:
                psycopg.connect(host=str(self.socket_dir), port=self.port, user=role, dbname="postgres",
                                password=f"not-{password}").close()
            except psycopg.OperationalError as exc:
                if "password authentication failed" in str(exc):
                    return
            assert time.monotonic() < deadline, "the server never checked the password"
            time.sleep(0.1)

    def new_database(self) -> str:
        """A fresh database; its SQLAlchemy URL (with a password the trust setup ignores, so that
        masking can be checked)."""
        name = f"maou_{uuid.uuid4().hex[:8]}"
        self._run("createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql://postgres:s3cret-pw@/{name}?host={self.socket_dir}&port={self.port}"
