"""SIGKILL at random moments of load, save, gc, pull and push: the store stays whole, nothing
stays locked, the registry holds a pushed image whole or not at all."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.stress import _harness as h

KILLS = h.knob(2, 60)
#: Findings of known, still open defects that a random kill may meet (none now).
KNOWN: tuple[str, ...] = ()
SIZE = h.knob(2 << 20, 200 << 20)
#: The image pulled and pushed (against the registry tests' registry, a real one).
REGISTRY_SIZE = h.knob(6 << 20, 64 << 20)


@pytest.mark.parametrize("pipe", [False, True], ids=["file", "pipe"])
def test_sigkill_during_load_loses_nothing(tmp_path, pipe):
    tally = h.kill_load(tmp_path, KILLS, SIZE, pipe=pipe)
    assert tally.runs == KILLS
    assert not tally.problems(*KNOWN)


def test_sigkill_during_save_leaves_a_whole_target_or_none(tmp_path):
    tally = h.kill_save(tmp_path, KILLS, SIZE)
    assert not tally.problems(*KNOWN)


def test_sigkill_during_gc_after_rm_loses_nothing(tmp_path):
    tally = h.kill_gc(tmp_path, KILLS, SIZE)
    assert not tally.problems(*KNOWN)


def test_sigkill_during_pull_loses_nothing(tmp_path, registry):
    tally = h.kill_pull(tmp_path, KILLS, REGISTRY_SIZE, registry.host)
    assert tally.runs == KILLS
    assert not tally.problems(*KNOWN)


def test_sigkill_during_push_leaves_the_image_whole_or_absent(tmp_path, registry):
    tally = h.kill_push(tmp_path, KILLS, REGISTRY_SIZE, registry.host)
    assert tally.runs == KILLS
    assert not tally.problems(*KNOWN)


def _wait_for(check, what):
    deadline = time.monotonic() + h.HANG
    while not check():
        assert time.monotonic() < deadline, f"hang guard: {what}"
        time.sleep(0.01)


def test_a_killed_loads_lease_and_ingest_go_at_the_next_gc(tmp_path):
    root, path = tmp_path / "root", tmp_path / "a.tar"
    image = h.archive(path, h.VICTIM, 16 << 20)
    cmd = h.Command(root, "load", "-q", pipe=path, feed=image.size * 3 // 5)
    _wait_for(lambda: any((root / "ingest").glob("*/")), "the load to start an ingest")
    cmd.kill()
    assert cmd.wait().rc == -signal.SIGKILL
    assert h.leftovers(root) == []
    again = h.castar(root, "load", "-q", "-i", str(path))
    assert again.rc == 0, again.describe()


def test_a_killed_save_leaves_no_file_beside_its_target(tmp_path):
    root, path, out = tmp_path / "root", tmp_path / "a.tar", tmp_path / "out"
    h.archive(path, h.KEEP, 64 << 20)
    assert h.castar(root, "load", "-q", "-i", str(path)).rc == 0
    out.mkdir()
    cmd = h.Command(root, "save", "-q", "keep", "-o", str(out / "saved.tar"))
    fds = f"/proc/{cmd.proc.pid}/fd"

    def writing() -> bool:
        try:
            return any(os.readlink(f"{fds}/{fd}").startswith(str(out)) for fd in os.listdir(fds))
        except OSError:
            return cmd.proc.poll() is not None

    _wait_for(writing, "the save to open its output")
    cmd.kill()
    cmd.wait()
    assert list(out.iterdir()) in ([], [out / "saved.tar"])
    assert h.audit(root, [h.KEEP]).findings == []
