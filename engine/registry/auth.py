"""Registry credentials from the auth files and credential helpers; login and logout (ERR-5).

These functions block: call them from a worker thread.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Final

from castar.store.errors import InvalidArgument, NotFound, Unavailable, map_os_errors

#: Docker Hub's names: its auth entries use the v1 index URL as the key.
#: Docker Hub's names; the first serves its registry API.
HUB: Final = ("registry-1.docker.io", "docker.io", "index.docker.io")
_KEY_OFHUB: Final = "https://index.docker.io/v1/"


def _read_paths() -> list[Path]:
    paths = []
    if file := os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(file))
    if folder := os.environ.get("DOCKER_CONFIG"):
        paths.append(Path(folder) / "config.json")
    paths.append(Path.home() / ".docker" / "config.json")
    return paths


def auth_file() -> Path:
    """The file ``login`` writes: ``$REGISTRY_AUTH_FILE``, else the Docker config."""
    return _read_paths()[0]


def registry_host(key: str) -> str:
    """The host a registry key names (``host``, ``https://host/v1/``)."""
    return key.split("://", 1)[-1].split("/", 1)[0]


def _matches(key: str, host: str) -> bool:
    named = registry_host(key)
    return named == host or (named in HUB and host in HUB)


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"registry auth file {path}: {type(e).__name__}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"registry auth file {path}: not a JSON object")
    return data


def _from_helper(name: str, host: str) -> tuple[str, str] | None:
    tool = shutil.which(f"docker-credential-{name}")
    if tool is None:
        return None
    server = _KEY_OFHUB if host in HUB else host
    try:
        done = subprocess.run(
            [tool, "get"], input=server.encode(), capture_output=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(f"docker-credential-{name}: no answer in 60 s") from None
    if done.returncode != 0:  # "credentials not found"; its output may hold secrets
        return None
    try:
        answer = json.loads(done.stdout)
        return str(answer["Username"]), str(answer["Secret"])
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument(f"docker-credential-{name}: malformed answer") from None


def _from_entry(entry: object, where: str) -> tuple[str, str] | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("username") and entry.get("password"):
        return str(entry["username"]), str(entry["password"])
    if not entry.get("auth"):
        return None
    try:
        user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
    except (ValueError, TypeError):
        raise InvalidArgument(f"{where}: auth is not base64 user:password") from None
    if not sep:
        raise InvalidArgument(f"{where}: auth is not base64 user:password")
    return user, password


def credentials_for(host: str) -> tuple[str, str] | None:
    """``(user, password)`` for a registry host from the auth files, or None."""
    for path in _read_paths():
        config = _load(path)
        helpers = config.get("credHelpers") or {}
        named = (v for k, v in helpers.items() if _matches(k, host))
        helper = next(named, config.get("credsStore"))
        if helper and (found := _from_helper(str(helper), host)):
            return found
        for key, entry in (config.get("auths") or {}).items():
            where = f"registry auth file {path}: {host}"
            if _matches(key, host) and (found := _from_entry(entry, where)):
                return found
    return None


def _write(path: Path, config: dict[str, Any]) -> None:
    with map_os_errors(f"write registry auth file {path}"):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".auth-", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(config, f, indent="\t")
                f.write("\n")
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise


def check_user(host: str, user: str) -> None:
    """A user name basic auth can carry: not empty, no ``:``."""
    if not user or ":" in user:
        raise InvalidArgument(f"login {host}: user name {user!r} is empty or holds ':'")


def login(host: str, user: str, password: str) -> Path:
    """Record ``user``/``password`` for ``host`` in ``auth_file()`` (mode 0600); return it."""
    check_user(host, user)
    path = auth_file()
    config = _load(path)
    auths = config.setdefault("auths", {})
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    auths[_KEY_OFHUB if host in HUB else host] = {"auth": token}
    _write(path, config)
    return path


def logout(host: str) -> Path:
    """Forget ``host``'s credentials in ``auth_file()``; NotFound if it held none."""
    path = auth_file()
    config = _load(path)
    auths = config.get("auths") or {}
    gone = [k for k in auths if _matches(k, host)]
    if not gone:
        raise NotFound(f"logout {host}: no credentials in {path}")
    for key in gone:
        del auths[key]
    _write(path, config)
    return path
