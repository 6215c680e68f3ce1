"""Registry fixtures: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1.

``registry`` answers without auth, ``auth_registry`` with htpasswd basic auth (its
``credentials``). Both are skipped when the binary is absent, unless ``CASTAR_REQUIRE_INTEROP=1``.
Test modules reach the helpers through fixtures (``load_synth``, ``small_image``): with
``--import-mode=importlib`` a conftest is not importable.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import pytest

from castar.engine import synth
from castar.engine.load import importer
from castar.engine.load.importer import LoadOptions
from castar.store import Image, Root, open_root

USER = "castar"
PASSWORD = "secret"
BINARY = "/usr/bin/docker-registry"


@dataclass(frozen=True)
class RegistryServer:
    """A running registry: ``host`` is ``127.0.0.1:PORT``, ``url`` its ``http://`` base."""

    host: str
    root: Path
    credentials: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def _binary() -> str:
    if os.access(BINARY, os.X_OK):
        return BINARY
    if os.environ.get("CASTAR_REQUIRE_INTEROP") == "1":
        pytest.fail(f"{BINARY} is required (CASTAR_REQUIRE_INTEROP=1) but not installed")
    pytest.skip(f"{BINARY} is not installed (apt-get install docker-registry)")


def _htpasswd(path: Path) -> None:
    """Write a bcrypt htpasswd file (distribution accepts bcrypt entries only)."""
    try:
        import bcrypt
    except ImportError:
        tool = shutil.which("htpasswd")
        if tool is None:
            pytest.skip("neither python bcrypt nor htpasswd (apache2-utils) is installed")
        out = subprocess.run(
            [tool, "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True
        )
        path.write_text(out.stdout)
        return
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{USER}:{hashed}\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    """Whether ``GET /v2/`` gets any HTTP answer (401 counts: the registry is up)."""
    try:
        with urllib.request.urlopen(url + "/v2/", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _serve(root: Path, auth: bool) -> Iterator[RegistryServer]:
    binary = _binary()
    lines = [
        "version: 0.1",
        "log:",
        "  level: error",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root / 'data'}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
    ]
    if auth:
        _htpasswd(root / "htpasswd")
        lines += ["auth:", "  htpasswd:", "    realm: castar", f"    path: {root / 'htpasswd'}"]
    for _attempt in range(3):  # the free port may be taken before the registry binds it
        creds = (USER, PASSWORD) if auth else None
        server = RegistryServer(f"127.0.0.1:{_free_port()}", root, creds)
        config = root / "config.yml"
        config.write_text("\n".join([*lines, "http:", f"  addr: {server.host}", ""]))
        with (root / "registry.log").open("wb") as log:
            proc = subprocess.Popen(
                [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline and not _answers(server.url):
            time.sleep(0.05)
        if proc.poll() is None and _answers(server.url):
            try:
                yield server
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    pytest.fail(f"docker-registry did not start: {(root / 'registry.log').read_text()[-2000:]}")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry without auth, shared by the session (tests use distinct repositories)."""
    yield from _serve(tmp_path_factory.mktemp("registry"), auth=False)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry behind htpasswd basic auth: ``USER`` / ``PASSWORD``."""
    yield from _serve(tmp_path_factory.mktemp("auth-registry"), auth=True)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Root]:
    """A fresh castar store."""
    async with open_root(tmp_path / "store") as s:
        yield s


LoadSynth = Callable[[Root, synth.SynthSpec], Awaitable[list[Image]]]


@pytest.fixture
def load_synth(tmp_path: Path) -> LoadSynth:
    """``await load_synth(store, spec)``: every platform of a synthetic image, loaded."""

    async def load(store: Root, spec: synth.SynthSpec) -> list[Image]:
        path = tmp_path / f"synth-{id(spec)}.tar"
        await anyio.to_thread.run_sync(synth.write_path, spec, path)
        roles = (store.content, store.images, store.leases)
        return await importer.load(*roles, path, LoadOptions.parse(all_platforms=True))

    return load


#: A small multi-platform image with an attestation per platform.
SMALL = synth.SynthSpec(
    name="synth:1",
    platforms=("linux/amd64", "linux/arm64", "linux/s390x"),
    layers=2,
    layer_size=8 << 10,
    attestations=True,
)


@pytest.fixture
async def small_image(store: Root, load_synth: LoadSynth) -> Image:
    """``SMALL`` loaded into ``store``: its one image record (an index of three platforms)."""
    (image,) = await load_synth(store, SMALL)
    return image
