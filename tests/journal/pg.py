"""A real PostgreSQL server for the tests, started here: initdb into a temporary directory, listening
on loopback (a free port) and a Unix socket there, password authentication (scram-sha-256).

PostgreSQL refuses to run as root: as root (CI), the server runs as the ``postgres`` user of
Debian's package (``runuser``), in a directory handed to that user; otherwise as the current user.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from fleet.ops.ports import free_port


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


class PgServer:
    def __init__(self) -> None:
        self.initdb, self.pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise RuntimeError("PostgreSQL is not installed (Debian's postgresql package: make test installs it)")
        self.as_user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and no 'postgres' user to run the server as") from None
            self.as_user = "postgres"
        self.dir = Path(tempfile.mkdtemp(prefix="mmfleet-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = "mmfleet"
        self.password = secrets.token_urlsafe(16)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_user:
            info = pwd.getpwnam(self.as_user)
            for p in (self.dir, pwfile):
                os.chown(p, info.pw_uid, info.pw_gid)
        os.chmod(self.dir, 0o700)
        self._run([self.initdb, "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                   "-E", "UTF8", "--no-instructions"])
        pwfile.unlink()

    def _run(self, cmd: list[str]) -> None:
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])}... failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run([self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> None:
        self._run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"])

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        except Exception:  # noqa: BLE001 - already stopped
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
