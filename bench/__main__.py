"""``python -m bench``: castar against the physical baselines and its peers, whole processes.

Owns the command line: presets and workload flags, which cases and tools, where the
JSON goes, ``--compare`` and ``--plot``. Generates the archives (castar's synth),
runs the cases (``bench._cases``) through the harness, prints the Markdown table
and exits 1 when a castar case failed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import _cases, _peers, _report, _workload, harness

DEFAULT_WORK = Path(tempfile.gettempdir()) / "castar-bench"


def _parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (try 16M, 256K, 1G)") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Time castar's load and save as whole processes against GNU tar, "
        "sha256sum, a sync Python copy, skopeo, containerd (ctr) and umoci.",
    )
    p.add_argument("--preset", choices=sorted(_workload.PRESETS), default="tiny")
    w = p.add_argument_group("workload (overrides the preset)")
    w.add_argument("--platforms", help="a count (first N of 8) or a comma list of platforms")
    w.add_argument("--layers", type=int, help="layers per platform")
    w.add_argument("--layer-size", type=_parse_size, help="bytes per layer (16M, 256K)")
    w.add_argument("--compression", choices=["none", "gzip", "zstd"], help="layer compression")
    w.add_argument("--shared", type=float, metavar="FRACTION", help="layers shared by platforms")
    w.add_argument(
        "--attestations",
        action="store_true",
        default=None,
        help="add an in-toto attestation manifest per platform",
    )
    w.add_argument(
        "--order",
        choices=["castar", "containerd"],
        help="tar entry order: castar's metadata-first or containerd's metadata-last",
    )
    w.add_argument("--seed", type=int, help="generator seed (archives are deterministic)")
    r = p.add_argument_group("what to run")
    r.add_argument("--runs", type=int, help="runs per tool and case (default: the preset's)")
    r.add_argument("--castar-only", action="store_true", help="no baselines, no peers")
    r.add_argument(
        "--peers",
        default=",".join(_peers.PEERS),
        help="peers to include (default: skopeo,ctr,umoci); '' for none",
    )
    r.add_argument("--cases", default="", help="comma list of case ids (default: all)")
    r.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    r.add_argument(
        "--timeout",
        type=float,
        default=600,
        metavar="S",
        help="kill a run after S seconds (default 600; 0: never); a peer that times out "
        "is not run in later cases",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORK,
        help=f"archives and scratch (default {DEFAULT_WORK})",
    )
    o.add_argument("--json", type=Path, help="results file (default: WORKDIR/<preset>.json)")
    o.add_argument("--compare", type=Path, metavar="OLD.json", help="print castar's change")
    o.add_argument("--plot", type=Path, metavar="FILE.png", help="bar chart of MB/s")
    o.add_argument(
        "--report",
        type=Path,
        metavar="RUN.json",
        help="run nothing: print the table (and --compare, --plot) of a saved run",
    )
    return p


def _workload_of(args: argparse.Namespace) -> _workload.Workload:
    w = _workload.PRESETS[args.preset].workload
    plats = w.platforms
    if args.platforms:
        if args.platforms.isdigit():
            n = int(args.platforms)
            if not 1 <= n <= len(_workload.PLATFORMS):
                raise SystemExit(f"bench: --platforms {n}: 1 to {len(_workload.PLATFORMS)}")
            plats = _workload.PLATFORMS[:n]
        else:
            plats = tuple(s.strip() for s in args.platforms.split(",") if s.strip())
    return _workload.Workload(
        platforms=plats,
        layers=w.layers if args.layers is None else args.layers,
        layer_size=w.layer_size if args.layer_size is None else args.layer_size,
        compression=args.compression or w.compression,
        shared_fraction=w.shared_fraction if args.shared is None else args.shared,
        attestations=w.attestations if args.attestations is None else args.attestations,
        order=args.order or w.order,
        seed=w.seed if args.seed is None else args.seed,
    )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    """Generate the archives, run every case and return the JSON document."""
    workload = _workload_of(args)
    runs = args.runs or _workload.PRESETS[args.preset].runs
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work, prefix="run-"))  # concurrent benches stay apart
    started = datetime.now(UTC)

    _log(f"bench: {args.preset}: {workload.describe()}")
    t0 = time.perf_counter()
    arch = _workload.prepare(workload, work / "archives", _cases.ONE)
    _log(
        f"bench: archive {arch.size / 1e6:,.1f} MB, {arch.blobs} blobs "
        f"({time.perf_counter() - t0:.1f}s to prepare); warming the page cache"
    )
    small = {
        n: _workload.prepare(w, work / "archives", _cases.ONE) for n, w in _workload.SMALL.items()
    }
    warm = [arch.plain, arch.gzip, arch.zstd, *(a.plain for a in small.values())]
    subprocess.run(["bash", "-c", f"cat {' '.join(map(str, warm))} > /dev/null"], check=False)
    opts = _cases.Options(
        castar_only=args.castar_only,
        peers=tuple(p for p in args.peers.split(",") if p),
        backend=args.backend,
        cases=tuple(c for c in args.cases.split(",") if c),
    )
    ctrd = None
    if not opts.castar_only and "ctr" in opts.peers and _peers.which("ctr"):
        ctrd = _peers.Containerd(Path(tempfile.mkdtemp(prefix="castar-ctrd-")))
    reg, shared = None, None
    wanted = set(opts.cases or _cases.CASE_IDS)
    if wanted & set(_cases.REGISTRY_CASES) and Path(_peers.REGISTRY).exists():
        reg = _peers.DockerRegistry(scratch / "registry")  # its storage in the run's temp dir
        if "push-16" in wanted:
            shared = _workload.archive(_workload.shared_base(workload), work / "archives")
    try:
        cases = _cases.build(arch, workload, scratch, opts, ctrd, small, reg, shared)
        warmups = _cases.warmup(small["small"], scratch / "warm")
        results = harness.run_cases(
            cases, runs, scratch, log=_log, timeout=args.timeout, warmup=warmups
        )
        start = harness.start_time(scratch)
    finally:
        if ctrd is not None:
            ctrd.stop()
            shutil.rmtree(ctrd.base, ignore_errors=True)
        if reg is not None:
            reg.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    tools = {"castar": f"castar (python -m castar --backend {args.backend})"}
    if not opts.castar_only:
        for t in ("tar", "sha256sum", *opts.peers):
            if _peers.which(t):
                tools[t] = _peers.version(t)
    return {
        "schema": 1,
        "date": started.isoformat(timespec="seconds"),
        "preset": args.preset,
        "workload": {**dataclasses.asdict(workload), "describe": workload.describe()},
        "archive": {"size": arch.size, "blobs": arch.blobs},
        "runs": runs,
        "castar_start_s": start,
        "host": harness.host(),
        "tools": tools,
        "results": [r.to_json() for r in results],
        "goals": _report.evaluate(results, args.preset),
        "skipped": opts.skipped,
    }


def _print(doc: dict[str, Any], results: list[harness.Result]) -> None:
    """The Markdown report of one run (what bench/README.md quotes)."""
    started = datetime.fromisoformat(doc["date"])
    describe = doc["workload"]["describe"]
    print(f"## castar bench: preset `{doc['preset']}`, {started:%Y-%m-%d %H:%M} UTC\n")
    print(
        f"{describe}; archive {doc['archive']['size'] / 1e6:,.1f} MB, {doc['archive']['blobs']} "
        f"blobs; median of {doc['runs']} run(s); MB/s = 10^6 bytes/s over the case's bytes; "
        f"spread = ±(max-min)/2 of the run times."
    )
    if "castar_start_s" in doc:
        print(
            f"Starting castar (`python -m castar --version`) takes "
            f"{doc['castar_start_s'] * 1000:.0f} ms of every castar run."
        )
    print()
    goals = doc["goals"]
    print(_report.table(results, goals))
    print()
    print(_report.goals_table(goals))
    print(f"\nGoals for the `{doc['preset']}` preset; this run: {describe}.\n")
    print(_report.rounds_table(results))
    for s in doc["skipped"]:
        print(f"\n- skipped {s['tool']} in {s['case']}: {s['note']}", end="")
    for r in results:
        if not r.ok and r.tool != "castar":
            print(f"\n- {r.tool} failed in {r.case}: {r.note}", end="")
        elif r.ok and r.note:
            print(f"\n- {r.tool} in {r.case}: {r.note}", end="")
    print()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: the private containerd is stopped


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    unknown = [c for c in args.cases.split(",") if c and c not in _cases.CASE_IDS]
    if unknown:
        _parser().error(f"unknown case {', '.join(unknown)}; cases: {', '.join(_cases.CASE_IDS)}")
    json_path: Path | None = None
    if args.report is not None:
        doc = json.loads(args.report.read_text())
        results = [harness.Result.from_json(r) for r in doc["results"]]
    else:
        doc = _measure(args)
        results = [harness.Result.from_json(r) for r in doc["results"]]
        json_path = args.json or args.workdir / f"{args.preset}.json"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=1))
    _print(doc, results)
    if json_path is not None:
        print(f"\nJSON: {json_path}")
    if args.compare:
        print()
        print(_report.compare(doc["results"], args.compare))
    if args.plot:
        title = f"castar bench, {doc['preset']}: {doc['workload']['describe']}"
        why = _report.plot(results, args.plot, title)
        print(f"plot: {why or args.plot}")
    broken = [r for r in results if r.tool == "castar" and not r.ok]
    for r in broken:
        _log(f"bench: castar failed in {r.case}: {r.note}")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
