"""save_many's planning gate and the writer's step ends: fewer waits, same archives.

16 jobs planning at once all finish planning together, so the first byte waits for
every plan; with two at a time the first job writes after one plan while the others
plan beside its copies. Archives stay what a lone save writes (EXP: determinism),
each job still plans before its first byte (EXP-13) under its own lease (SAVE-5).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

from castar.engine import oci
from castar.engine import platforms as plat
from castar.engine.save import exporter, write
from castar.store.errors import NotFound
from castar.store.root import Root, open_root

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from castar.engine.save.exporter import SavePlan

NAME = "docker.io/library/many-saves:1"
SPECS = ("linux/amd64", "linux/arm64/v8", "linux/s390x")


async def _image(store: Root) -> None:
    entries = []
    for spec in SPECS:
        p = plat.parse(spec)
        cfg_data = oci.canonical_json({"architecture": p.architecture, "os": p.os})
        c = await store.content.write_blob(cfg_data, media_type=oci.OCI_CONFIG)
        cfg = oci.Descriptor(oci.OCI_CONFIG, c.digest, c.size)
        d = await store.content.write_blob(f"{spec} layer".encode() * 1000)
        layer = oci.Descriptor(oci.OCI_LAYER_GZIP, d.digest, d.size)
        m = await store.content.write_blob(
            oci.encode_manifest(oci.Manifest(config=cfg, layers=(layer,))),
            labels=oci.children_labels([cfg, layer]),
        )
        entries.append(oci.Descriptor(oci.OCI_MANIFEST, m.digest, m.size, platform=p))
    top = tuple(entries)
    i = await store.content.write_blob(
        oci.encode_index(oci.Index(manifests=top)), labels=oci.children_labels(top)
    )
    await store.images.create(NAME, oci.Descriptor(oci.OCI_INDEX, i.digest, i.size))


def _spy_plans(monkeypatch: pytest.MonkeyPatch, pair: int) -> dict[str, int]:
    """Counts ``plan_save`` calls, and how many ran at once at most.

    The first plan waits inside until ``pair`` plans are in at once, so a gate letting
    ``pair`` through shows them overlapping whatever the machine's speed (a gate
    letting fewer through would never release the first plan: the test times out).
    """
    seen = {"now": 0, "most": 0, "calls": 0}
    together = anyio.Event()
    plan = exporter.plan_save

    async def spy(store: Root, names: Sequence[str], options: exporter.SaveOptions) -> SavePlan:
        seen["now"] += 1
        seen["calls"] += 1
        seen["most"] = max(seen["most"], seen["now"])
        try:
            if seen["now"] == pair:
                together.set()
            await together.wait()
            return await plan(store, names, options)
        finally:
            seen["now"] -= 1

    monkeypatch.setattr(exporter, "plan_save", spy)
    return seen


async def test_save_many_plans_two_jobs_at_a_time_and_writes_what_lone_saves_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_root(tmp_path / "store") as store:
        await _image(store)
        lone = []
        for i, spec in enumerate(SPECS * 3):
            result = await exporter.save(
                store,
                [NAME],
                tmp_path / f"lone{i}.tar",
                exporter.SaveOptions.parse(platforms=[spec]),
            )
            lone.append(result.size)
        seen = _spy_plans(monkeypatch, 2)
        jobs = [
            exporter.SaveJob(
                [NAME], tmp_path / f"many{i}.tar", exporter.SaveOptions.parse(platforms=[spec])
            )
            for i, spec in enumerate(SPECS * 3)
        ]
        results = await exporter.save_many(store, jobs)
        assert await store.leases.list() == []  # SAVE-5: every job's own lease is gone
    assert seen["calls"] == len(jobs)
    assert seen["most"] == 2  # without the gate all nine plan at once
    assert [r.size for r in results] == lone
    for i in range(len(jobs)):  # identical bytes to a lone save of the same platform
        assert (tmp_path / f"many{i}.tar").read_bytes() == (tmp_path / f"lone{i}.tar").read_bytes()


async def test_a_plan_failing_behind_the_gate_fails_save_many_before_its_first_byte(
    tmp_path: Path,
) -> None:
    async with open_root(tmp_path / "store") as store:
        await _image(store)
        jobs = [
            exporter.SaveJob(
                [NAME], tmp_path / f"ok{i}.tar", exporter.SaveOptions.parse(platforms=[SPECS[0]])
            )
            for i in range(3)
        ]
        bad = tmp_path / "bad.tar"
        jobs.append(
            exporter.SaveJob([NAME], bad, exporter.SaveOptions.parse(platforms=["linux/riscv64"]))
        )  # SAVE-2
        with pytest.raises(NotFound, match="riscv64"):
            await exporter.save_many(store, jobs)
        assert await store.leases.list() == []
    assert not bad.exists()  # EXP-13: the failing job never opened its sink


async def test_a_step_ends_only_before_more_blob_bytes_so_the_tail_costs_no_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # io-hops: hops are the cost; a 1.5 MiB layer under a 512 KiB budget is three
    # copy steps, the padding, the other members and the end of archive ride on the last.
    async with open_root(tmp_path / "store") as store:
        c = await store.content.write_blob(b'{"architecture":"amd64","os":"linux"}')
        cfg = oci.Descriptor(oci.OCI_CONFIG, c.digest, c.size)
        d = await store.content.write_blob(bytes(range(256)) * 6144)  # 1.5 MiB
        layer = oci.Descriptor(oci.OCI_LAYER_GZIP, d.digest, d.size)
        m = await store.content.write_blob(
            oci.encode_manifest(oci.Manifest(config=cfg, layers=(layer,))),
            labels=oci.children_labels([cfg, layer]),
        )
        target = oci.Descriptor(oci.OCI_MANIFEST, m.digest, m.size)
        await store.images.create("docker.io/library/one:1", target)
        whole = tmp_path / "whole.tar"
        await exporter.save(store, ["docker.io/library/one:1"], whole, exporter.SaveOptions())
        monkeypatch.setattr(write, "_HOP", 512 << 10)
        monkeypatch.setattr(write, "_CALL", 512 << 10)
        steps = _count_steps(monkeypatch)
        out = tmp_path / "stepped.tar"
        await exporter.save(store, ["docker.io/library/one:1"], out, exporter.SaveOptions())
    assert steps == [3]
    assert out.read_bytes() == whole.read_bytes()  # the step size never changes the bytes


def _count_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    count = [0]
    real = anyio.to_thread.run_sync

    async def run_sync(func: Callable[..., object], *args: object, **kw: Any) -> object:
        if func is next:
            count[0] += 1
        return await real(func, *args, **kw)

    monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)
    return count


async def test_a_long_zero_copy_hop_is_cancellable_between_copy_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One hop may copy 256 MiB; cancelling must not wait for all of it: the hop checks for
    # cancellation between copy calls, and the partial archive is removed. The save is
    # cancelled from inside the 5th copy call: no 6th call follows.
    async with open_root(tmp_path / "store") as store:
        await _image(store)
        big = await store.content.write_blob(bytes(4 << 20))
        await store.images.create(
            "docker.io/library/big:1",
            await _manifest_of(store, oci.Descriptor(oci.OCI_LAYER, big.digest, big.size)),
        )
        monkeypatch.setattr(write, "_CALL", 64 << 10)  # 64 calls for the layer
        calls = [0]
        real = os.copy_file_range
        scope = anyio.CancelScope()

        def cancelling(*args: Any) -> int:
            calls[0] += 1
            if calls[0] == 5:
                anyio.from_thread.run_sync(scope.cancel)  # returns once the cancel is made
            return real(*args)

        monkeypatch.setattr(os, "copy_file_range", cancelling)
        out = tmp_path / "cancelled.tar"
        with scope:
            await exporter.save(store, ["docker.io/library/big:1"], out, exporter.SaveOptions())
        assert await store.leases.list() == []
    assert scope.cancelled_caught
    assert calls[0] == 5  # stopped at the next check, not after all 64 calls
    assert not out.exists()  # the partial archive save() created is removed


async def _manifest_of(store: Root, layer: oci.Descriptor) -> oci.Descriptor:
    c = await store.content.write_blob(b'{"architecture":"amd64","os":"linux"}')
    cfg = oci.Descriptor(oci.OCI_CONFIG, c.digest, c.size)
    m = await store.content.write_blob(
        oci.encode_manifest(oci.Manifest(config=cfg, layers=(layer,))),
        labels=oci.children_labels([cfg, layer]),
    )
    return oci.Descriptor(oci.OCI_MANIFEST, m.digest, m.size)
