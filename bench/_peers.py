"""Peer tools for the harness: which are installed, their versions, a private containerd
and a private registry.

Owns ``Containerd``: a containerd daemon of the harness's own (CRI plugin disabled,
private root, state dir and unix socket under a temp dir) that ``ctr --address SOCK``
talks to, restarted on a fresh root when a case needs an empty store, and stopped at
the end; and ``DockerRegistry``: Debian's ``docker-registry`` (distribution) on
127.0.0.1 with filesystem storage under a temp dir, restarted empty for every push run.
Imports no castar.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

PEERS = ("skopeo", "ctr", "umoci")
REGISTRY = "/usr/bin/docker-registry"


def which(tool: str) -> str | None:
    """The tool's path, or None when it is not installed (containerd counts for ``ctr``)."""
    if tool == "ctr":
        if shutil.which("containerd") is None:
            return None
        return shutil.which("ctr")
    return shutil.which(tool)


def version(tool: str) -> str:
    """One line naming the tool's version (``"?"`` when it cannot say)."""
    args = {
        "ctr": ["containerd", "--version"],
        "skopeo": ["skopeo", "--version"],
        "umoci": ["umoci", "--version"],
        "tar": ["tar", "--version"],
        "sha256sum": ["sha256sum", "--version"],
    }.get(tool, [tool, "--version"])
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "?"


_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"""


class _Daemon:
    """A daemon of the harness's own under ``base``, logging to ``log``; ``state`` says
    what it holds ("" when empty or unknown)."""

    def __init__(self, base: Path, log: str) -> None:
        self.base = base
        self.log = base / log
        self.state = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def _launch(self, argv: list[str], name: str, ready: Callable[[], bool], poll: float) -> None:
        """Start ``argv`` and wait up to 30 s until ``ready()``; stopped again if never."""
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start; see {self.log}")
            if ready():
                return
            time.sleep(poll)
        self.stop()
        raise RuntimeError(f"{name} did not answer in 30 s; see {self.log}")

    def stop(self) -> None:
        """Stop the daemon if it runs (SIGTERM, then SIGKILL after 10 s)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Containerd(_Daemon):
    """A private containerd daemon under ``base`` (root, state, socket, log).

    ``state`` says what the store holds ("" when empty or unknown) so cases can
    share one daemon: loads restart it on a fresh root, saves import once.
    """

    def __init__(self, base: Path) -> None:
        super().__init__(base, "containerd.log")
        self.sock = base / "c.sock"  # short: unix socket paths are capped at 108 bytes

    @property
    def ctr(self) -> str:
        """The ``ctr`` command prefix for this daemon."""
        return f"ctr --address {self.sock}"

    @property
    def pid(self) -> int | None:
        """The daemon's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self, *, fresh: bool = True) -> None:
        """(Re)start the daemon; ``fresh`` wipes its root and state first."""
        self.stop()
        root, state = self.base / "root", self.base / "state"
        if fresh:
            for d in (root, state):
                shutil.rmtree(d, ignore_errors=True)
            self.state = ""
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.toml"
        config.write_text(
            _CONFIG.format(root=root, state=state, sock=self.sock, opt=self.base / "opt")
        )
        self._launch(["containerd", "--config", str(config)], "containerd", self._answers, 0.05)

    def _answers(self) -> bool:
        if not self.sock.exists():
            return False
        argv = [*self.ctr.split(), "version"]
        return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0

    def reset_peak(self) -> None:
        """Reset the daemon's peak RSS (VmHWM) so the next reading covers one run."""
        if self.pid is not None:
            with contextlib.suppress(OSError):
                Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_kib(self) -> int:
        """The daemon's peak RSS in KiB since the last :meth:`reset_peak` (0 if unknown)."""
        if self.pid is None:
            return 0
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0


_REGISTRY_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {host}
"""


class DockerRegistry(_Daemon):
    """A private ``docker-registry`` (distribution 2.8) on 127.0.0.1, storage under ``base``.

    The port is picked once, so commands built before the first start stay valid over
    restarts. ``state`` says what the registry holds ("" when empty or unknown), so the
    pull cases push their image once and the push cases start from an empty registry.
    """

    def __init__(self, base: Path) -> None:
        super().__init__(base, "registry.log")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.host = f"127.0.0.1:{s.getsockname()[1]}"

    @property
    def url(self) -> str:
        """The registry's ``http://`` base."""
        return f"http://{self.host}"

    def start(self, *, fresh: bool = True) -> None:
        """(Re)start the registry; ``fresh`` wipes its storage first."""
        self.stop()
        data = self.base / "data"
        if fresh:
            shutil.rmtree(data, ignore_errors=True)
            self.state = ""
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.yml"
        config.write_text(_REGISTRY_CONFIG.format(data=data, host=self.host))
        self._launch([REGISTRY, "serve", str(config)], "docker-registry", self._answers, 0.02)

    def _answers(self) -> bool:
        """Whether ``GET /v2/`` gets any HTTP answer (a 401 too)."""
        conn = http.client.HTTPConnection(self.host, timeout=1)
        try:
            conn.request("GET", "/v2/")
            conn.getresponse().close()
            return True
        except OSError:
            return False
        finally:
            conn.close()


def ensure_dir_gone(path: Path) -> None:
    """Remove a file or directory tree if present."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
