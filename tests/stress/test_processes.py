"""Two processes on one root, concurrent loads: nothing lost, one consistent result."""

from __future__ import annotations

from tests.stress import _harness as h

SECONDS = h.knob(10.0, 180.0)


def test_load_rm_load_against_a_gc_loop_loses_nothing(tmp_path):
    tally = h.load_rm_against_gc(tmp_path, SECONDS, 2 << 20)
    assert tally.runs >= 1
    assert not tally.problems()


def test_four_cli_loads_of_one_archive_agree(tmp_path):
    tally = h.concurrent_loads(tmp_path, 4, h.knob(4 << 20, 64 << 20))
    assert not tally.problems()


async def test_eight_loads_in_one_process_agree(tmp_path):
    tally = await h.concurrent_store_loads(tmp_path, 8, 4 << 20)
    assert tally.runs == 8
    assert not tally.problems()
