"""Faults: a clear error with the right exit code, nothing lost, the space given back."""

from __future__ import annotations

import pytest

from tests.stress import _faults as f
from tests.stress import _harness as h


@pytest.fixture
def mounts(tmp_path_factory):
    try:  # a probe of this session's own: another session's mount is never touched
        with h.tmpfs(tmp_path_factory.mktemp("tmpfs-probe"), 1 << 20):
            pass
    except OSError as exc:
        pytest.skip(f"needs a tmpfs mount: {exc}")


def test_enospc_mid_load_gives_a_clear_error_and_the_space_back(tmp_path, mounts):
    assert not f.enospc_load(tmp_path, 8 << 20).problems()


def test_enospc_mid_save_leaves_nothing(tmp_path, mounts):
    assert not f.enospc_save(tmp_path, 4 << 20).problems()


def test_a_read_only_root_reads_and_refuses_writes(tmp_path, mounts):
    assert not f.read_only(tmp_path).problems()


def test_a_failing_fsync_fails_the_load_and_records_nothing(tmp_path):
    assert not f.failing_fsync(tmp_path).problems()


def test_a_symlinked_store_part_is_not_followed(tmp_path):
    assert not f.symlinked_parts(tmp_path).problems()


def test_save_into_the_store_is_refused(tmp_path):
    assert not f.output_into_store(tmp_path).problems()
