"""Two processes on one root, concurrent loads: nothing lost, one consistent result."""

from __future__ import annotations

import anyio

from castar import open_store
from tests.stress import _harness as h

SECONDS = h.knob(15.0, 180.0)


def test_load_rm_load_against_a_gc_loop_loses_nothing(tmp_path):
    tally = h.load_rm_against_gc(tmp_path, SECONDS, 2 << 20)
    assert tally.runs >= 1
    assert not tally.problems()


def test_four_cli_loads_of_one_archive_agree(tmp_path):
    tally = h.concurrent_loads(tmp_path, 4, h.knob(4 << 20, 64 << 20))
    assert not tally.problems()


async def test_eight_loads_in_one_process_agree(tmp_path):
    path, root = tmp_path / "one.tar", tmp_path / "root"
    image = await anyio.to_thread.run_sync(h.archive, path, h.VICTIM, 4 << 20)
    results = []

    async def load(s) -> None:
        results.append([(i.name, i.target.digest) for i in await s.load(path)])

    async with open_store(root) as s, anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(load, s)
    assert results == [[(h.VICTIM, image.index.digest)]] * 8
    found = await anyio.to_thread.run_sync(h.audit, root, [h.VICTIM])
    assert (found.torn, found.lost, found.stuck, found.findings) == ([], [], [], [])
