"""Registry fixtures: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1.

``registry`` answers without auth, ``auth_registry`` with htpasswd basic auth (its
``credentials``), ``token_registry`` with bearer tokens from the tests' own token server.
All are skipped when the binary is absent, unless ``CASTAR_REQUIRE_INTEROP=1``. Test modules
reach the helpers through fixtures (``load_synth``, ``small_image``): with
``--import-mode=importlib`` a conftest is not importable.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    except urllib.error.HTTPError as e:
        e.close()
        return True
    except OSError:
        return False


def _serve(
    root: Path, auth: list[str] | None = None, credentials: tuple[str, str] | None = None
) -> Iterator[RegistryServer]:
    """Run the registry; ``auth`` is its config's ``auth:`` section, ``credentials`` its user."""
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
    lines += auth or []
    for _attempt in range(3):  # the free port may be taken before the registry binds it
        server = RegistryServer(f"127.0.0.1:{_free_port()}", root, credentials)
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
    yield from _serve(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry behind htpasswd basic auth: ``USER`` / ``PASSWORD``."""
    root = tmp_path_factory.mktemp("auth-registry")
    _htpasswd(root / "htpasswd")
    auth = ["auth:", "  htpasswd:", "    realm: castar", f"    path: {root / 'htpasswd'}"]
    yield from _serve(root, auth, (USER, PASSWORD))


@dataclass
class TokenServer:
    """The tests' token server: grants what is asked to ``USER``, pull alone to anyone."""

    key: Any
    certificate: bytes
    service: str = "castar-registry"
    issuer: str = "castar-tests"
    scopes: list[str] = field(default_factory=list)  # every scope asked for, in order
    requests: list[list[str]] = field(default_factory=list)  # the scopes of each token asked

    def token(self, authorization: str | None, scopes: list[str]) -> str | None:
        """A signed token for ``scopes``, or None when the credentials are wrong."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, utils

        self.scopes += scopes
        self.requests.append(scopes)
        user = None
        if authorization:
            basic = base64.b64decode(authorization.removeprefix("Basic ")).decode()
            if basic != f"{USER}:{PASSWORD}":
                return None
            user = USER
        access = []
        for scope in scopes:
            kind, name, actions = scope.rsplit(":", 2)
            granted = actions.split(",") if user else ["pull"]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64.b64encode(self.certificate).decode()],
        }
        signed = ".".join(_b64url(json.dumps(part).encode()) for part in (header, claims))
        der = self.key.sign(signed.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        return f"{signed}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token_server(root: Path) -> tuple[TokenServer, Path]:
    """A token signer with its self-signed certificate written to ``root``."""
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization

    from tests.registry._certs import self_signed

    key, certificate = self_signed("castar-tests")
    bundle = root / "token.pem"
    bundle.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return TokenServer(key, certificate.public_bytes(serialization.Encoding.DER)), bundle


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RegistryServer, TokenServer]]:
    """A registry behind bearer tokens from the tests' token server (``/token`` on loopback).

    The server's ``scopes`` lists every scope asked for, so tests can count token requests.
    """
    root = tmp_path_factory.mktemp("token-registry")
    signer, bundle = _token_server(root)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            token = signer.token(self.headers.get("Authorization"), query.get("scope", []))
            body = json.dumps({"token": token, "access_token": token, "expires_in": 300})
            self.send_response(401 if token is None else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    realm = f"http://127.0.0.1:{httpd.server_address[1]}/token"
    auth = [
        "auth:",
        "  token:",
        f"    realm: {realm}",
        f"    service: {signer.service}",
        f"    issuer: {signer.issuer}",
        f"    rootcertbundle: {bundle}",
    ]
    try:
        for server in _serve(root, auth, (USER, PASSWORD)):
            yield server, signer
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def publish(tmp_path: Path) -> Callable[[synth.SynthSpec], None]:
    """``publish(spec)``: ``spec``'s archive put into a registry under its name by skopeo."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")

    def run(spec: synth.SynthSpec) -> None:
        path = tmp_path / f"publish-{id(spec)}.tar"
        synth.write_path(spec, path)
        cmd = ["skopeo", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false"]
        subprocess.run(
            [*cmd, f"oci-archive:{path}", f"docker://{spec.name}"], check=True, capture_output=True
        )

    return run


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
