"""``python -m bench.reliability [--quick]``: the reliability campaign (issue 15) as a table.

Runs the long version of tests/stress (its code, imported): >= 60 SIGKILLs each of load from
a file and from a pipe (a 200 MB archive), save -o FILE and gc after rm, pull and push (a 64 MB
image, against the registry tests' docker-registry); 3 minutes of load/rm
against a gc loop; concurrent loads; the faults and the hostile inputs. ``--quick`` runs the
short pass. Prints one Markdown row per case: runs, kills, torn, lost, stuck, findings.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # tests/stress is not part of the wheel: import it from the checkout
    sys.path.insert(0, str(REPO))

from tests.stress import _faults, _hostile  # noqa: E402
from tests.stress import _harness as h  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable


def _guarded(case: str, run: Callable[[], h.Tally]) -> h.Tally:
    try:
        return run()
    except OSError as exc:  # no tmpfs here (not root): say so in the table
        tally = h.Tally(case)
        tally.finding(f"skipped: {exc}")
        return tally


def _hostile_case(work: Path, case: str, make: Callable[[Path], None], ok: set[int]) -> h.Tally:
    with contextlib.ExitStack() as stack:
        if case == "bomb":  # a load that does fill a disk fills only this tmpfs
            stack.enter_context(h.tmpfs(work / "roots", 48 << 20))
        tally = _hostile.load_both_ways(work, case, make, ok)
    tally.case = f"hostile: {case}"
    return tally


def _registry_kills(work: Path, kills: int, size: int) -> list[h.Tally]:
    try:
        with h.registry(work / "registry") as host:
            (work / "pull").mkdir()
            (work / "push").mkdir()
            return [
                h.kill_pull(work / "pull", kills, size, host),
                h.kill_push(work / "push", kills, size, host),
            ]
    except OSError as exc:  # no docker-registry here: say so in the table
        rows = [h.Tally("kill pull"), h.Tally("kill push")]
        for row in rows:
            row.finding(f"skipped: {exc}")
        return rows


def campaign(work: Path, quick: bool) -> list[h.Tally]:
    kills, size = (3, 4 << 20) if quick else (60, 200 << 20)
    registry_size = 6 << 20 if quick else 64 << 20
    seconds, members, bomb = (15.0, 20_000, 96 << 20) if quick else (180.0, 200_000, 4 << 30)
    n = iter(range(1000))

    def fresh() -> Path:
        d = work / str(next(n))
        d.mkdir()
        return d

    rows = [
        h.kill_load(fresh(), kills, size, pipe=False),
        h.kill_load(fresh(), kills, size, pipe=True),
        h.kill_save(fresh(), kills, size),
        h.kill_gc(fresh(), kills, size),
        *_registry_kills(fresh(), kills, registry_size),
        h.load_rm_against_gc(fresh(), seconds, 2 << 20),
        h.concurrent_loads(fresh(), 4, size // 4),
        anyio.run(h.concurrent_store_loads, fresh(), 8, size // 4),
        _guarded("ENOSPC mid-load", lambda: _faults.enospc_load(fresh(), 8 << 20)),
        _guarded("ENOSPC mid-save", lambda: _faults.enospc_save(fresh(), 4 << 20)),
        _guarded("read-only root", lambda: _faults.read_only(fresh())),
        _faults.failing_fsync(fresh()),
        _faults.symlinked_parts(fresh()),
        _faults.output_into_store(fresh()),
    ]
    for case, (make, ok) in _hostile.cases(members, bomb).items():
        run = functools.partial(_hostile_case, fresh(), case, make, ok)
        rows.append(_guarded(f"hostile: {case}", run))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the short pass CI runs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="castar-reliability-") as tmp:
        rows = campaign(Path(tmp), args.quick)
    print(h.TABLE_HEAD)
    for row in rows:
        print(row.row())
    return 0


if __name__ == "__main__":
    sys.exit(main())
