"""Registry credentials: auth files in their order, credential helpers, login and logout."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import sys
import urllib.request
from pathlib import Path

import pytest

import castar
from castar._cli import main
from castar.engine.registry import auth


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME, no $DOCKER_CONFIG, $REGISTRY_AUTH_FILE or store location set."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "CASTAR_ROOT", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write(path: Path, config: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def test_nothing_configured() -> None:
    assert auth.credentials_for("127.0.0.1:5000") is None


def test_docker_config_auths(home: Path) -> None:
    write(
        home / ".docker/config.json",
        {
            "auths": {
                "127.0.0.1:5000": {"auth": b64("alice:pa:ss")},
                "https://quay.io": {"username": "bob", "password": "pw"},
                "https://index.docker.io/v1/": {"auth": b64("carol:hub")},
                "broken.example": {"auth": "!!not base64"},
            }
        },
    )
    assert auth.credentials_for("127.0.0.1:5000") == ("alice", "pa:ss")
    assert auth.credentials_for("quay.io") == ("bob", "pw")
    assert auth.credentials_for("registry-1.docker.io") == ("carol", "hub")
    assert auth.credentials_for("docker.io") == ("carol", "hub")
    assert auth.credentials_for("ghcr.io") is None
    with pytest.raises(castar.InvalidArgument) as info:
        auth.credentials_for("broken.example")
    assert "not base64" in str(info.value)


def test_files_in_order(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(home / ".docker/config.json", {"auths": {"a.example": {"auth": b64("home:1")}}})
    docker = write(tmp_path / "dc/config.json", {"auths": {"a.example": {"auth": b64("dc:2")}}})
    monkeypatch.setenv("DOCKER_CONFIG", str(docker.parent))
    assert auth.credentials_for("a.example") == ("dc", "2")
    registry_file = write(tmp_path / "auth.json", {"auths": {"b.example": {"auth": b64("r:3")}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(registry_file))
    assert auth.credentials_for("b.example") == ("r", "3")
    assert auth.credentials_for("a.example") == ("dc", "2")  # the next file knows it
    registry_file.write_text(json.dumps({"auths": {"a.example": {"auth": b64("r:4")}}}))
    assert auth.credentials_for("a.example") == ("r", "4")


def test_malformed_file_names_it_not_its_content(home: Path) -> None:
    path = home / ".docker/config.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"auths": {"a": {"auth": "c2VjcmV0"}')
    with pytest.raises(castar.InvalidArgument) as info:
        auth.credentials_for("a")
    assert str(path) in str(info.value)
    assert "c2VjcmV0" not in str(info.value)


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``docker-credential-x`` on PATH: knows one server, logs what it was asked."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "docker-credential-x"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 2\n'
        "read server\n"
        f'echo "$server" >> {tmp_path / "asked"}\n'
        'case "$server" in\n'
        "  helped.example|https://index.docker.io/v1/)"
        ' echo \'{"ServerURL":"s","Username":"hu","Secret":"hs"}\' ;;\n'
        '  bad.example) echo "not json" ;;\n'
        "  *) echo 'credentials not found in native keychain'; exit 1 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "asked"


def test_cred_helpers(home: Path, helper: Path) -> None:
    write(
        home / ".docker/config.json",
        {
            "credHelpers": {"helped.example": "x", "docker.io": "x", "other.example": "x"},
            "auths": {"other.example": {"auth": b64("plain:pw")}},
        },
    )
    assert auth.credentials_for("helped.example") == ("hu", "hs")
    assert auth.credentials_for("registry-1.docker.io") == ("hu", "hs")
    # the helper has none: the auths entry still answers
    assert auth.credentials_for("other.example") == ("plain", "pw")
    assert auth.credentials_for("unhelped.example") is None  # not the helper's host
    assert helper.read_text().split() == [
        "helped.example",
        "https://index.docker.io/v1/",
        "other.example",
    ]


def test_creds_store_for_every_host(home: Path, helper: Path) -> None:
    write(home / ".docker/config.json", {"credsStore": "x", "credHelpers": {"b.example": "nope"}})
    assert auth.credentials_for("helped.example") == ("hu", "hs")
    assert auth.credentials_for("elsewhere.example") is None
    assert auth.credentials_for("b.example") is None  # its own helper is not installed
    with pytest.raises(castar.InvalidArgument) as info:
        auth.credentials_for("bad.example")
    assert str(info.value) == "docker-credential-x: malformed answer: invalid argument"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_login_writes_0600_and_logout_removes(home: Path) -> None:
    path = write(home / ".docker/config.json", {"auths": {}, "credsStore": "", "other": [1]})
    path.chmod(0o644)
    assert auth.login("127.0.0.1:5000", "castar", "s3cret") == path
    assert mode(path) == 0o600
    assert auth.credentials_for("127.0.0.1:5000") == ("castar", "s3cret")
    assert auth.login("docker.io", "hubber", "x") == path
    config = json.loads(path.read_text())
    assert config["other"] == [1]  # what castar does not own is kept
    assert set(config["auths"]) == {"127.0.0.1:5000", "https://index.docker.io/v1/"}
    assert auth.credentials_for("registry-1.docker.io") == ("hubber", "x")

    assert auth.logout("127.0.0.1:5000") == path
    assert auth.credentials_for("127.0.0.1:5000") is None
    assert mode(path) == 0o600
    with pytest.raises(castar.NotFound):
        auth.logout("127.0.0.1:5000")
    auth.logout("registry-1.docker.io")
    assert json.loads(path.read_text())["auths"] == {}
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temporary left


def test_login_prefers_registry_auth_file(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "new/dir/auth.json"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(target))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    assert auth.login("h.example", "u", "p") == target
    assert mode(target) == 0o600
    assert not (home / ".docker").exists()
    assert not (tmp_path / "dc").exists()
    assert auth.credentials_for("h.example") == ("u", "p")


def test_login_refuses_a_bad_user() -> None:
    for user in ("", "a:b"):
        with pytest.raises(castar.InvalidArgument) as info:
            auth.login("h.example", user, "s3cret")
        assert "s3cret" not in str(info.value)


def test_cli_login_and_logout(
    home: Path, auth_registry, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    path = home / ".docker/config.json"
    host = auth_registry.host
    user, password = auth_registry.credentials
    monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
    assert main(["login", f"http://{host}/", "-u", user, "--password-stdin"]) == 0
    out, err = capsys.readouterr()
    assert out == f"Credentials for {host} saved in {path}\n"
    assert password not in out + err
    assert mode(path) == 0o600
    assert auth.credentials_for(host) == (user, password)
    assert not (home / ".local").exists()  # no store was opened

    assert main(["logout", host, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"registry": host, "file": str(path)}
    assert auth.credentials_for(host) is None
    assert main(["logout", host]) == 3
    assert "no credentials" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["basic", "bearer"])
def test_cli_login_checks_the_credentials_with_the_registry_first(
    kind: str, home: Path, auth_registry, token_registry, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # As docker login: the registry must accept them (GET /v2/), else exit 7 and nothing saved.
    server = auth_registry if kind == "basic" else token_registry[0]
    user, password = server.credentials
    monkeypatch.setattr(sys, "stdin", io.StringIO("wrong-" + password))
    assert main(["login", server.host, "-u", user, "--password-stdin"]) == 7
    out, err = capsys.readouterr()
    assert err.startswith("castar: error: ")
    assert "wrong-" not in out + err
    assert not (home / ".docker").exists()
    monkeypatch.setattr(sys, "stdin", io.StringIO(password))
    assert main(["login", server.host, "-u", user, "--password-stdin"]) == 0
    assert auth.credentials_for(server.host) == (user, password)


def test_cli_login_to_a_registry_without_auth_saves_the_credentials(
    registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("anything"))
    assert main(["login", registry.host, "-u", "me", "--password-stdin"]) == 0
    assert auth.credentials_for(registry.host) == ("me", "anything")


def test_cli_login_without_a_terminal_needs_its_inputs(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    for argv in (["--password-stdin"], ["-u", "me"]):
        assert main(["login", "h.example", *argv]) == 4
        assert "no terminal: give -u USER --password-stdin" in capsys.readouterr().err
    assert auth.credentials_for("h.example") is None


def test_cli_login_to_a_real_registry(auth_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    user, password = auth_registry.credentials
    monkeypatch.setattr(sys, "stdin", io.StringIO(password))
    assert main(["login", auth_registry.host, "-u", user, "--password-stdin"]) == 0
    found = auth.credentials_for(auth_registry.host)
    request = urllib.request.Request(auth_registry.url + "/v2/")
    request.add_header("Authorization", "Basic " + b64(":".join(found)))
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_cli_never_shows_the_password(
    home: Path, registry, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    home.mkdir()
    (home / ".docker").write_text("a file where the folder should be")
    for argv in (
        ["--debug", "login", registry.host, "-u", "me", "--password-stdin"],  # cannot write
        ["--debug", "login", "h.example", "-u", "a:b", "--password-stdin"],  # bad user
    ):
        monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
        assert main(argv) != 0
        out, err = capsys.readouterr()
        assert "castar: error: " in err
        assert "s3cret" not in out + err
        assert base64.b64encode(b"me:s3cret").decode() not in out + err
