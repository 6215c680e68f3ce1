"""The ``castar`` command line end to end, through ``python -m castar`` on temporary roots.

Each command runs at least once as a subprocess (the real entry point); --help texts run
in-process. Exit codes come from one table (castar._cli.EXIT_CODES, design-rules errors-exit-codes).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import anyio
import pytest

from castar._cli import main
from castar.engine import synth
from castar.store import open_root

NAME = "docker.io/library/synth:latest"
SPEC = synth.SynthSpec(
    name=NAME,
    platforms=("linux/amd64", "linux/arm64", "linux/arm/v7"),
    layers=2,
    layer_size=64 << 10,
)
EXIT_NOT_FOUND, EXIT_INVALID, EXIT_PRECONDITION, EXIT_DATA_LOSS = 3, 4, 5, 6


def castar(
    root: Path | None, *args: str | Path, input: bytes | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m castar [--root ROOT] ARGS`` and return its result (text mode)."""
    argv = [sys.executable, "-m", "castar", *(["--root", str(root)] if root else [])]
    argv += [str(a) for a in args]
    if input is not None:
        cp = subprocess.run(argv, input=input, capture_output=True, timeout=120, check=False)
        return subprocess.CompletedProcess(
            argv, cp.returncode, cp.stdout.decode(errors="replace"), cp.stderr.decode()
        )
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("capture_output", "stdout" not in kw)
    return subprocess.run(argv, text=True, timeout=120, check=False, **kw)


def in_process(
    root: Path, *args: str, capsys: pytest.CaptureFixture[str]
) -> subprocess.CompletedProcess[str]:
    """The same command through castar._cli.main in this process (cheaper than a subprocess)."""
    capsys.readouterr()
    code = main(["--root", str(root), *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["castar", *args], code, out, err)


def one_error_line(cp: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The run failed with exactly one ``castar: error:`` line naming every needle."""
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, cp.stderr
    assert lines[0].startswith("castar: error: ")
    assert "Traceback" not in cp.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def snapshot(root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(image name → target) and recorded blob digests, read in-process."""

    async def read() -> tuple[list[tuple[str, str]], list[str]]:
        async with open_root(root) as s:
            images = [(i.name, str(i.target.digest)) for i in await s.images.list()]
            return images, [str(i.digest) for i in await s.content.walk()]

    return anyio.run(read)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archive") / "synth.tar"
    synth.write_path(SPEC, path)
    return path


@pytest.fixture(scope="module")
def loaded(
    tmp_path_factory: pytest.TempPathFactory, archive: Path
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("loaded") / "root"
    cp = castar(root, "load", "-i", archive, "--platform", "linux/amd64,linux/arm64", "-q")
    return root, cp


@pytest.fixture
def root(loaded: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> Path:
    """A private copy of the loaded store, for tests that change it."""
    copy = tmp_path / "root"
    shutil.copytree(loaded[0], copy)
    return copy


# -- load, images, inspect ---------------------------------------------------------------------


def test_load_with_two_platforms_prints_docker_style_lines(loaded) -> None:
    _, cp = loaded
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == "Loaded image: synth:latest\n"  # LOAD-5
    assert cp.stderr == ""  # no progress bar on a pipe


def test_load_from_a_pipe_on_stdin(archive: Path, tmp_path: Path) -> None:
    cp = castar(tmp_path / "r", "load", input=archive.read_bytes())
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == "Loaded image: synth:latest\n"
    images, _ = snapshot(tmp_path / "r")
    assert [n for n, _ in images] == [NAME]


def test_load_of_an_unnamed_image_prints_its_id(archive: Path, tmp_path: Path, capsys) -> None:
    # LOAD-5: dangling images (no name in the archive) print "Loaded image ID: <digest>".
    unnamed = tmp_path / "unnamed.tar"
    with tarfile.open(archive) as src, tarfile.open(unnamed, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if member.name == "manifest.json":
                continue
            if member.name == "index.json":
                index = json.load(data)
                for entry in index["manifests"]:
                    entry.pop("annotations", None)
                body = json.dumps(index).encode()
                member.size = len(body)
                data = io.BytesIO(body)
            dst.addfile(member, data)
    assert main(["--root", str(tmp_path / "r"), "load", "-i", str(unnamed)]) == 0  # in-process
    (line,) = capsys.readouterr().out.splitlines()
    assert line == f"Loaded image ID: {synth.plan(SPEC).index.digest}"


def test_images_tree_shows_unloaded_platforms_unavailable(loaded) -> None:
    # TREE-1..3: one row per platform, index order; availability is a column off a terminal.
    cp = castar(loaded[0], "images", "--tree")
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "ID", "DISK", "USAGE", "CONTENT", "SIZE", "AVAILABLE"]
    assert lines[1].split()[0] == "synth:latest"
    rows = [ln.split() for ln in lines[2:]]
    assert [(r[1], r[-1]) for r in rows] == [
        ("linux/amd64", "yes"),
        ("linux/arm64", "yes"),
        ("linux/arm/v7", "no"),
    ]
    assert rows[2][-3:-1] == ["0B", "0B"]
    assert "\x1b" not in cp.stdout


def test_images_tree_on_a_terminal_shows_unavailable_rows_faint(loaded) -> None:
    # TREE-3: faint (ANSI SGR 2) on terminals, no AVAILABLE column there.
    code, shown = on_terminal(loaded[0], "images", "--tree", stream="stdout")
    assert code == 0
    assert "AVAILABLE" not in shown
    (faint,) = [ln for ln in shown.splitlines() if ln.startswith("\x1b[2m")]
    assert "linux/arm/v7" in faint


def test_images_tree_json_carries_the_documented_fields(loaded) -> None:
    cp = castar(loaded[0], "images", "--tree", "--json", "--filter", "reference=synth*")
    assert cp.returncode == 0, cp.stderr
    (image,) = json.loads(cp.stdout)
    assert image["names"] == [NAME]
    assert image["id"].startswith("sha256:")
    assert image["content_size"] == sum(p["content_size"] for p in image["manifests"])
    plats = image["platforms"]
    assert [p["platform"] for p in plats] == ["linux/amd64", "linux/arm64", "linux/arm/v7"]
    assert [p["available"] for p in plats] == [True, True, False]
    assert plats[2]["content_size"] == 0
    assert {"digest", "media_type", "kind", "unpacked_size"} <= set(plats[0])


def test_images_plain_listing_and_filter(loaded, capsys) -> None:
    cp = castar(loaded[0], "--backend", "trio", "images", "--filter", "reference=synth*")
    assert cp.returncode == 0, cp.stderr
    head, row = cp.stdout.splitlines()
    assert head.split() == ["IMAGE", "ID", "CREATED", "CONTENT", "SIZE", "PLATFORMS"]
    assert row.split()[0] == "synth:latest"
    assert row.split()[-1] == "2/3"  # available / listed platforms
    assert main(["--root", str(loaded[0]), "images", "--filter", "reference=nomatch*"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []


def test_inspect_platform_shows_its_manifest_and_config(loaded) -> None:
    cp = castar(loaded[0], "inspect", "synth", "--platform", "linux/arm64")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["name"] == NAME
    assert doc["config"]["architecture"] == "arm64"
    assert len(doc["manifest"]["layers"]) == 2


def on_terminal(root: Path, *args: str | Path, stream: str = "stderr") -> tuple[int, str]:
    """Run with stderr (or stdout) on a pseudo-terminal; return (exit code, what it showed)."""
    master, slave = pty.openpty()
    argv = [sys.executable, "-m", "castar", "--root", str(root), *map(str, args)]
    streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, stream: slave}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **streams)
    os.close(slave)
    shown = bytearray()
    while True:  # drain while it runs, so a full pty buffer cannot block the child
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return proc.wait(timeout=120), shown.decode(errors="replace")


def test_progress_bar_on_a_terminal_and_silenced_by_q(archive: Path, tmp_path: Path) -> None:
    code, shown = on_terminal(tmp_path / "a", "load", "-i", archive)
    assert code == 0
    assert "Loading" in shown
    assert "kB" in shown  # bytes done / total
    code, shown = on_terminal(tmp_path / "b", "load", "-i", archive, "-q")
    assert (code, shown) == (0, "")


# -- save ------------------------------------------------------------------------------------


def test_save_one_platform_to_a_file(loaded, tmp_path: Path) -> None:
    out = tmp_path / "one.tar"
    cp = castar(
        loaded[0], "save", "synth:latest", "--platform", "linux/amd64", "-o", out, "--json",
        "--progress", "json",
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    result = json.loads(cp.stdout)
    assert result["written"] == out.stat().st_size
    events = [json.loads(line) for line in cp.stderr.splitlines()]  # machine-readable progress
    assert events[0]["event"] == "start"
    with tarfile.open(out) as tar:
        names = tar.getnames()
        index = json.load(tar.extractfile("index.json"))
        manifest = json.load(tar.extractfile("manifest.json"))
    assert events[-1] == {  # the item: the member being written, the last one at the end
        "event": "end", "op": "saving", "done": result["written"], "total": result["written"],
        "item": names[-1], "ok": True,
    }  # fmt: skip
    assert names[:3] == ["oci-layout", "index.json", "manifest.json"]
    assert len(index["manifests"]) == 1
    assert manifest[0]["RepoTags"] == ["synth:latest"]
    assert not list(tmp_path.glob(".one.tar.castar-*"))  # the temp file was renamed


def test_save_to_a_pipe_writes_the_archive_on_stdout(loaded, tmp_path: Path) -> None:
    out = tmp_path / "piped.tar"
    with out.open("wb") as f:
        cp = castar(
            loaded[0],
            "save",
            "synth",
            "--platform",
            "linux/arm64",
            stdout=f,
            stderr=subprocess.PIPE,
        )
    assert cp.returncode == 0, cp.stderr
    with tarfile.open(out) as tar:
        assert "index.json" in tar.getnames()


@pytest.mark.parametrize("extra", [[], ["--write-behind"]])
def test_save_appended_to_stdout_goes_after_what_was_there(
    loaded, tmp_path: Path, extra: list[str]
) -> None:
    # `castar save IMAGE >> out.tar`: stdout is O_APPEND, which copy_file_range refuses.
    ref = tmp_path / "ref.tar"
    assert castar(loaded[0], "save", "synth", "-o", ref).returncode == 0
    out = tmp_path / "appended.tar"
    out.write_bytes(b"before\n")
    with out.open("ab") as f:
        cp = castar(loaded[0], "save", "synth", *extra, stdout=f, stderr=subprocess.PIPE)
    assert cp.returncode == 0, cp.stderr
    assert out.read_bytes() == b"before\n" + ref.read_bytes()


def test_save_dry_run_json_prints_the_plan_and_writes_nothing(loaded, tmp_path: Path) -> None:
    cp = castar(loaded[0], "save", "synth", "--dry-run", "--json", "-o", tmp_path / "x.tar")
    assert cp.returncode == 0, cp.stderr
    plan = json.loads(cp.stdout)
    assert {"images", "members", "size", "skipped"} <= set(plan)
    assert [m["name"] for m in plan["members"]][:2] == ["oci-layout", "index.json"]
    assert not (tmp_path / "x.tar").exists()


def test_save_refuses_to_write_an_archive_to_a_terminal(loaded) -> None:
    master, slave = pty.openpty()
    try:
        cp = castar(loaded[0], "save", "synth", stdout=slave, stderr=subprocess.PIPE)
    finally:
        os.close(slave)
        os.close(master)
    assert cp.returncode == EXIT_INVALID
    one_error_line(cp, "cowardly refusing", "terminal", "-o FILE")


# -- tag, rm, gc, lease, verify ------------------------------------------------------------------


def garbage(root: Path) -> list[str]:
    """What a GC would remove now (in-process dry run)."""

    async def dry() -> list[str]:
        async with open_root(root) as s:
            return [str(d) for d in (await s.gc(dry_run=True)).removed]

    return anyio.run(dry)


def test_tag_then_rm_then_gc_reclaims_nothing_still_named(root: Path) -> None:
    already = garbage(root)  # e.g. the archive's index.json blob (GC-11)
    assert castar(root, "tag", "synth", "mine:1").returncode == 0
    images, blobs = snapshot(root)
    assert [n for n, _ in images] == ["docker.io/library/mine:1", NAME]
    cp = castar(root, "rm", "mine:1")
    assert (cp.returncode, cp.stdout) == (0, "Untagged: mine:1\n")
    cp = castar(root, "gc", "--dry-run", "--json")
    assert cp.returncode == 0, cp.stderr
    report = json.loads(cp.stdout)
    assert report == {
        "dry_run": True,
        "removed": already,
        "bytes_freed": report["bytes_freed"],
        "images_removed": [],
        "leases_removed": [],
        "ingests_removed": [],
    }
    assert snapshot(root) == ([(NAME, images[1][1])], blobs)


def test_rm_then_gc_deletes_the_image_content(root: Path) -> None:
    _, blobs = snapshot(root)
    cp = castar(root, "rm", "synth")
    assert cp.stdout.splitlines()[0] == "Untagged: synth:latest"
    cp = castar(root, "gc")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.splitlines()[-1].startswith(f"{len(blobs)} blobs, ")
    assert snapshot(root) == ([], [])


def test_gc_why_names_the_root_that_keeps_a_blob(loaded, capsys) -> None:
    images, blobs = snapshot(loaded[0])
    target = images[0][1]
    leaf = next(b for b in blobs if b != target and b not in garbage(loaded[0]))
    cp = in_process(loaded[0], "gc", "--why", leaf, capsys=capsys)
    assert cp.returncode == 0, cp.stderr
    path = cp.stdout.strip().split(" -> ")
    assert path[0] == f"image {NAME}"
    assert path[1] == target
    assert path[-1] == leaf


def test_lease_create_ls_rm(root: Path, capsys) -> None:
    cp = castar(root, "lease", "create", "--expire", "1h", "--label", "owner=ci", "--id", "L1")
    assert (cp.returncode, cp.stdout) == (0, "L1\n")
    cp = castar(root, "lease", "ls", "--json")
    (lease,) = json.loads(cp.stdout)
    assert lease["id"] == "L1"
    assert lease["labels"]["owner"] == "ci"
    assert lease["expires_at"] is not None
    assert in_process(root, "lease", "rm", "L1", capsys=capsys).returncode == 0
    cp = in_process(root, "lease", "rm", "L1", capsys=capsys)
    assert cp.returncode == EXIT_NOT_FOUND
    one_error_line(cp, 'lease "L1"', "not found")


def test_verify_passes_then_reports_a_corrupt_blob_with_exit_6(root: Path) -> None:
    cp = castar(root, "verify", "synth")
    assert cp.returncode == 0, cp.stderr
    _, blobs = snapshot(root)
    victim = root / "blobs" / "sha256" / blobs[0].removeprefix("sha256:")
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF
    victim.write_bytes(bytes(data))
    cp = castar(root, "verify", "--json")
    assert cp.returncode == EXIT_DATA_LOSS
    report = json.loads(cp.stdout)
    assert [(p["digest"], p["kind"]) for p in report["problems"]] == [(blobs[0], "corrupt")]
    one_error_line(cp, f"1 of {len(blobs)} blobs are missing or corrupt")


# -- bad input: one line, the documented exit code, the store unchanged ------------------------


@pytest.mark.parametrize(
    ("subproc", "args", "code", "needles"),
    [
        (True, ["load", "-i", "missing.tar"], EXIT_NOT_FOUND, ["missing.tar", "not found"]),
        (True, ["load", "-i", "x.tar", "--platform", "linux/&arm"], EXIT_INVALID, ["linux/&arm"]),
        (False, ["inspect", "nope:1"], EXIT_NOT_FOUND, ['image "nope:1": not found']),
        (False, ["save", "nope:1", "-o", "out.tar"], EXIT_NOT_FOUND, ["nope:1"]),
        (False, ["save", "synth", "-o", "no/such/d.tar"], EXIT_NOT_FOUND, ["no/such", "not found"]),
    ],
)
def test_bad_input_gives_exit_code_one_line_and_no_change(
    root: Path, tmp_path: Path, monkeypatch, capsys, subproc, args, code, needles
) -> None:
    before = snapshot(root)
    monkeypatch.chdir(tmp_path)
    cp = castar(root, *args) if subproc else in_process(root, *args, capsys=capsys)
    assert cp.returncode == code, cp.stderr
    one_error_line(cp, *needles)
    assert snapshot(root) == before
    assert not (tmp_path / "out.tar").exists()


def test_corrupt_archive_fails_with_precondition_and_keeps_the_store(
    archive: Path, root: Path, tmp_path: Path
) -> None:
    with tarfile.open(archive) as tar:
        layer = max(tar.getmembers(), key=lambda m: m.size)
    data = bytearray(archive.read_bytes())
    data[layer.offset_data + 100] ^= 0xFF
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    images, _ = snapshot(root)
    cp = castar(root, "load", "-i", bad, "--all-platforms")
    assert cp.returncode == EXIT_PRECONDITION, cp.stderr
    one_error_line(cp, layer.name, "unexpected digest")  # IMP-4
    assert snapshot(root)[0] == images


def test_debug_shows_the_traceback(loaded, capsys) -> None:
    cp = in_process(loaded[0], "inspect", "nope:1", "--debug", capsys=capsys)
    assert cp.returncode == EXIT_NOT_FOUND
    assert "Traceback" in cp.stderr
    assert cp.stderr.strip().splitlines()[-1] == 'castar: error: image "nope:1": not found'


# -- demo, help, version -------------------------------------------------------------------------


def test_demo_runs_on_the_default_root_from_castar_root(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "CASTAR_ROOT": str(tmp_path / "default"), "TMPDIR": str(scratch)}
    cp = castar(None, "demo", env=env)
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout
    assert "round trip" in out
    assert "castar-demo:latest" in out
    assert snapshot(tmp_path / "default")[0][0][0] == "docker.io/library/castar-demo:latest"
    assert list(scratch.iterdir()) == []  # its temporary files are cleaned up


COMMANDS = ["load", "save", "images", "inspect", "tag", "rm", "gc", "lease", "verify", "demo"]


def test_help_documents_exit_codes_and_every_command_has_an_example(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    top = capsys.readouterr().out
    for line in ("2  usage", "3  not found", "4  invalid input", "6  data loss"):
        assert line in top
    for command in [*COMMANDS, "lease create", "lease ls", "lease rm"]:
        with pytest.raises(SystemExit):
            main([*command.split(), "--help"])
        text = capsys.readouterr().out
        assert f"example:\n  castar {command}" in text, command


def test_version_and_usage_errors(capsys) -> None:
    cp = castar(None, "--version")
    assert (cp.returncode, cp.stdout) == (0, "castar 0.1.0\n")
    script = Path(sys.executable).with_name("castar")  # the console script pip installs
    assert script.exists(), "install castar (pip install -e .) to get the castar command"
    cp = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert (cp.returncode, cp.stdout) == (0, "castar 0.1.0\n")
    assert main([]) == 2  # no command: the help, on stderr
    assert "exit codes:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["save"])  # IMAGE is required
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "castar: error: the following arguments are required: IMAGE (see: castar save --help)\n"
    )


def test_demo_size_and_platform_options_parse() -> None:
    from castar._demo import PLATFORMS, parse_platforms, parse_size
    from castar.store.errors import InvalidArgument

    assert [parse_size(t) for t in ("48M", "1G", "512k", "1.5MiB", "500000")] == [
        48 << 20,
        1 << 30,
        512 << 10,
        3 << 19,
        500000,
    ]
    assert parse_platforms("2") == list(PLATFORMS[:2])
    assert parse_platforms("linux/s390x,linux/riscv64") == ["linux/s390x", "linux/riscv64"]
    for bad in ("5", "1", "linux/amd64"):
        with pytest.raises(InvalidArgument, match="--platforms"):
            parse_platforms(bad)
    with pytest.raises(InvalidArgument, match='bad size "lots"'):
        parse_size("lots")


# -- the store root: its own files are never an output, its parts never links -----------------


def test_save_into_the_store_root_is_refused_and_the_store_stays_intact(
    root: Path, tmp_path: Path
) -> None:
    before = snapshot(root)
    blob = root / "blobs" / "sha256" / before[1][0].removeprefix("sha256:")
    data = blob.read_bytes()
    (tmp_path / "link").symlink_to(root / "blobs")
    for out in (root / "meta.db", blob, root / "new.tar", tmp_path / "link" / "x.tar"):
        cp = castar(root, "save", "synth", "-o", out)
        assert cp.returncode == EXIT_INVALID, cp.stderr
        one_error_line(cp, "inside the store root", str(root.resolve()))
    assert (snapshot(root), blob.read_bytes()) == (before, data)
    assert not (root / "new.tar").exists()
    assert castar(root, "images").returncode == 0
    assert castar(root, "verify").returncode == 0


@pytest.mark.anyio
async def test_save_many_refuses_a_job_writing_into_the_root(root: Path, tmp_path: Path) -> None:
    from castar import SaveJob, SaveOptions, open_store
    from castar.store.errors import InvalidArgument

    async with open_store(root) as store:
        jobs = [
            SaveJob(["synth"], tmp_path / "ok.tar", SaveOptions()),
            SaveJob(["synth"], root / "meta.db", SaveOptions()),
        ]
        with pytest.raises(InvalidArgument, match="inside the store root"):
            await store.save_many(jobs)
    assert not (tmp_path / "ok.tar").exists()
    assert castar(root, "verify").returncode == 0


@pytest.mark.parametrize("part", ["blobs", "ingest", "meta.db"])
def test_a_root_whose_part_is_a_symlink_is_refused(root: Path, tmp_path: Path, part: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    (root / "ingest").mkdir(exist_ok=True)
    (root / part).rename(elsewhere)
    (root / part).symlink_to(elsewhere)
    cp = castar(root, "images")
    assert cp.returncode == EXIT_INVALID, cp.stderr
    one_error_line(cp, f"{part} is a symlink")


def test_an_empty_root_is_a_usage_error_never_the_current_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CASTAR_ROOT", "XDG_DATA_HOME")}
    for argv, extra in ((["--root", ""], {}), ([], {"CASTAR_ROOT": "", "HOME": ""})):
        cp = castar(None, *argv, "images", cwd=tmp_path, env={**env, **extra})
        assert cp.returncode == 2, cp.stderr
        one_error_line(cp, "empty store root")
    assert list(tmp_path.iterdir()) == []


_STALLED_SAVE = """
import sys, time, anyio
from castar import open_store

async def main():
    async with open_store(sys.argv[1]) as store:
        await store.save(["synth"], sys.argv[2], progress=lambda *_: time.sleep(3600))

anyio.run(main, backend=sys.argv[3])
"""


def open_sizes(pid: int, under: Path) -> list[int]:
    """Sizes of the files under ``under`` that process ``pid`` has open (unnamed ones too)."""
    sizes = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(fd).startswith(str(under)):
                sizes.append(fd.stat().st_size)
    return sizes


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_killed_save_leaves_no_file_behind(root: Path, tmp_path: Path, backend: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    argv = [sys.executable, "-c", _STALLED_SAVE, str(root), str(out / "x.tar"), backend]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
    try:
        for _ in range(6000):  # until the archive's first bytes are in its unnamed file
            if any(open_sizes(proc.pid, out)) or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[1]
        assert any(open_sizes(proc.pid, out))
    finally:
        proc.kill()
        proc.communicate()
    assert list(out.iterdir()) == []
