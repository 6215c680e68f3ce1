"""What ``python -m bench`` prints and writes: the Markdown table, the goals, --compare, --plot.

Owns the goals of issue 7 (castar's rate against a baseline or peer in the same run),
the table (case, tool, MB/s, spread, castar's speed-up, peak RSS, goal), the JSON
document, the comparison with an earlier JSON file and the bar chart (matplotlib,
imported only for ``--plot``). Works on ``harness.Result`` values; runs nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from bench.harness import Result

RSS_GOAL_MIB = 100
TOOL_ORDER = (
    "castar",
    "python",
    "python-syncfs",
    "dd",
    "anyio",
    "curl",
    "sha256sum",
    "tar",
    "ctr",
    "skopeo",
    "umoci",
)


@dataclass(frozen=True, slots=True)
class Goal:
    """castar in ``case`` against ``tool`` in ``other_case``, in the same run.

    ``kind`` ``rate``: castar's MB/s must be >= ``factor`` x the other's (``tool`` a comma
    list: the slowest of them, the lower bound); ``time``: castar's median seconds <=
    ``factor`` x the other's (start-up and small cases, whose bytes say nothing); ``ok``:
    castar's case passes (a case that checks its own outcome, push-16). ``large`` is the
    factor for the large preset when it differs; ``presets`` limits the goal to those
    presets (empty: all).
    """

    id: str
    text: str
    case: str
    tool: str
    other_case: str
    factor: float
    kind: str = "rate"
    large: float | None = None
    presets: tuple[str, ...] = ()

    def target(self, preset: str) -> float:
        """The factor that applies to ``preset``."""
        return self.large if preset == "large" and self.large is not None else self.factor


def _floor(cid: str, text: str, tool: str = "anyio", factor: float = 1.5) -> Goal:
    floor = "python -c pass" if tool == "python" else "the anyio floor"
    return Goal(cid, f"{text} <= {factor:g} x {floor}", cid, tool, "start-floor", factor, "time")


GOALS = (
    _floor("start-version", "castar --version", "python", 2),
    _floor("start-help", "castar --help", "python", 2),
    _floor("start-images", "castar images (an empty store)"),
    _floor("small-load", "load of the 280 KB 4-platform archive"),
    _floor("small-save", "save of the 280 KB 4-platform image"),
    _floor("alpine-load", "load of the 4 MB 2-platform archive"),
    _floor("alpine-save", "save of the 4 MB 2-platform image"),
    Goal(
        "busy-load",
        "the small load beside an unsynced dd <= 1.5 x its quiet time",
        "busy-load",
        "castar",
        "small-load",
        1.5,
        "time",
    ),
    Goal(
        "load-vs-dd",
        "load from a file >= 0.7 x (large: 0.9 x) dd conv=fsync of its bytes",
        "load-file",
        "dd",
        "load-file",
        0.7,
        large=0.9,
    ),
    Goal(
        "shm-vs-sync",
        "load into tmpfs >= 1.2 x the sync read+sha256+write loop into tmpfs",
        "load-shm",
        "python",
        "load-shm",
        1.2,
    ),
    Goal(
        "many-vs-syncfs",
        "5,000 x 64 KiB: load from a file >= 0.94 x the one-sync baseline",
        "load-file",
        "python-syncfs",
        "load-file",
        0.94,
        presets=("many",),
    ),
    Goal(
        "load-vs-ctr",
        "load from a file >= 10 x ctr import --all-platforms",
        "load-file",
        "ctr",
        "load-file",
        10,
    ),
    Goal(
        "one-vs-full",
        "one-platform load >= 4 x castar's full load",
        "load-one",
        "castar",
        "load-file",
        4,
    ),
    Goal(
        "one-vs-ctr",
        "one-platform load >= 30 x ctr import --platform",
        "load-one",
        "ctr",
        "load-one",
        30,
    ),
    Goal(
        "save-vs-tar",
        "save to a file >= 1.0 x (large: 1.5 x) GNU tar -cf",
        "save-file",
        "tar",
        "save-file",
        1.0,
        large=1.5,
    ),
    Goal(
        "save-vs-ctr",
        "save to a file >= 15 x ctr export --all-platforms",
        "save-file",
        "ctr",
        "save-file",
        15,
    ),
    Goal(
        "load-vs-skopeo",
        "load >= 6 x skopeo copy --all oci-archive: oci:",
        "load-file",
        "skopeo",
        "load-file",
        6,
    ),
    Goal(
        "save-vs-skopeo",
        "save >= 6 x skopeo copy --all oci: oci-archive:",
        "save-file",
        "skopeo",
        "save-file",
        6,
    ),
    Goal(
        "pull-vs-bound",
        "pull >= 0.8 x the lower of curl's download and dd conv=fsync",
        "pull",
        "curl,dd",
        "pull",
        0.8,
    ),
    Goal("push-vs-curl", "push >= 0.8 x curl's POST + PUT upload", "push", "curl", "push", 0.8),
    Goal(
        "pull-vs-skopeo", "pull >= 1.5 x skopeo copy --all docker://", "pull", "skopeo", "pull", 1.5
    ),
    Goal(
        "push-vs-skopeo",
        "push >= 1.5 x skopeo copy --all to docker://",
        "push",
        "skopeo",
        "push",
        1.5,
    ),
    Goal(
        "pull-one-vs-pull",
        "pulling one platform >= 6 x pulling all (8 platforms)",
        "pull-one",
        "castar",
        "pull",
        6,
    ),
    Goal(
        "push-16-once",
        "16 concurrent pushes sharing a base layer upload it once",
        "push-16",
        "castar",
        "push-16",
        1,
        "ok",
    ),
)


def _find(results: Sequence[Result], case: str, tool: str) -> Result | None:
    for r in results:
        if r.case == case and r.tool == tool and r.ok:
            return r
    return None


def _ratio(g: Goal, mine: Result | None, other: Result | None) -> float | None:
    if mine is None or other is None or g.kind == "ok":
        return None
    if g.kind == "time":
        return mine.median / other.median if other.median > 0 else None
    return mine.mbps / other.mbps if other.mbps > 0 else None


def evaluate(results: Sequence[Result], preset: str = "large") -> list[dict[str, Any]]:
    """Each goal that applies to ``preset``, with castar's measured ratio and its status."""
    out: list[dict[str, Any]] = []
    for g in GOALS:
        if g.presets and preset not in g.presets:
            continue
        mine = _find(results, g.case, "castar")
        bounds = [_find(results, g.other_case, t) for t in g.tool.split(",")]
        other = None if None in bounds else min(bounds, key=lambda r: r.mbps if r else 0)
        ratio, target = _ratio(g, mine, other), g.target(preset)
        met = ratio is not None and (ratio <= target if g.kind == "time" else ratio >= target)
        if g.kind == "ok":
            ran = any(r.case == g.case and r.tool == "castar" and r.runs for r in results)
            ratio, met = (None, False) if not ran else (float(mine is not None), mine is not None)
        out.append(
            {
                "id": g.id,
                "goal": g.text,
                "case": g.case,
                "tool": g.tool if other is None else other.tool,
                "other_case": g.other_case,
                "kind": g.kind,
                "target": target,
                "ratio": ratio,
                "status": "not measured" if ratio is None else ("met" if met else "missed"),
            }
        )
    castar = [r for r in results if r.tool == "castar" and r.ok]
    peak = max((r.rss_kib for r in castar), default=0) / 1024
    out.append(
        {
            "id": "rss",
            "goal": f"castar peak RSS < {RSS_GOAL_MIB} MiB (every castar case)",
            "case": "*",
            "tool": "castar",
            "other_case": "",
            "target": RSS_GOAL_MIB,
            "ratio": peak if castar else None,
            "status": "not measured"
            if not castar
            else ("met" if peak < RSS_GOAL_MIB else "missed"),
        }
    )
    return out


def _op(goal: dict[str, Any]) -> str:
    return "<=" if goal.get("kind") == "time" else ">="


def _fmt_rate(mbps: float) -> str:
    return f"{mbps:,.0f}" if mbps >= 10 else f"{mbps:.2f}"


def table(results: Sequence[Result], goals: Sequence[dict[str, Any]]) -> str:
    """The Markdown table: one row per case and tool, castar first in each case."""
    marks: dict[tuple[str, str], list[str]] = {}
    for g in goals:
        if g["id"] == "rss" or g["status"] == "not measured":
            continue
        mine = g["tool"] == "castar" or g.get("kind") in ("time", "ok")  # castar's row
        row = (g["case"], "castar") if mine else (g["other_case"], g["tool"])
        text = g["status"] if g.get("kind") == "ok" else f"{_op(g)} {g['target']:g}x: {g['status']}"
        marks.setdefault(row, []).append(text)
    rss_goal = next(g for g in goals if g["id"] == "rss")
    lines = [
        "| case | tool | what | MB/s | best | spread | castar speed-up | peak RSS MiB | goal |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    castar_rate = {r.case: r.mbps for r in results if r.tool == "castar" and r.ok}
    for r in results:
        if not r.ok:
            rate, best, spread, up = "failed", "", "", ""
        elif not r.bytes:  # a start-up case: its time is what counts (the rounds table)
            rate, best, spread, up = "-", "-", f"±{r.spread / 2:.0%}", ""
        else:
            rate, best, spread = _fmt_rate(r.mbps), _fmt_rate(r.best_mbps), f"±{r.spread / 2:.0%}"
            base = castar_rate.get(r.case)
            up = f"{base / r.mbps:.2f}x" if base and r.mbps > 0 else ""
        goal = "; ".join(marks.get((r.case, r.tool), []))
        if r.tool == "castar" and r.ok and rss_goal["status"] != "not measured":
            rss_ok = "met" if r.rss_kib / 1024 < RSS_GOAL_MIB else "missed"
            goal = "; ".join(x for x in (goal, f"RSS < {RSS_GOAL_MIB} MiB: {rss_ok}") if x)
        rss = f"{r.rss_kib / 1024:.0f}" if r.runs else ""
        label = r.label.replace("|", "\\|")
        lines.append(
            f"| {r.case} | {r.tool} | {label} | {rate} | {best} | {spread} | {up} | {rss} "
            f"| {goal} |"
        )
    return "\n".join(lines)


def rounds_table(results: Sequence[Result]) -> str:
    """Every round's seconds per case and tool, with the median."""
    lines = ["| case | tool | median s | rounds s |", "|---|---|---:|---|"]
    for r in results:
        rounds = " / ".join(f"{x.seconds:.3f}" for x in r.runs)
        median = f"{r.median:.3f}" if r.runs else ""
        lines.append(f"| {r.case} | {r.tool} | {median} | {rounds} |")
    return "\n".join(lines)


def goals_table(goals: Sequence[dict[str, Any]]) -> str:
    """One row per goal: target, measured, met / missed / not measured."""
    lines = ["| goal | target | measured | status |", "|---|---:|---:|---|"]
    for g in goals:
        if g["id"] == "rss":
            target = f"< {g['target']} MiB"
            got = "" if g["ratio"] is None else f"{g['ratio']:.0f} MiB"
        elif g.get("kind") == "ok":
            target, got = "yes", "" if g["ratio"] is None else ("yes" if g["ratio"] else "no")
        else:
            target = f"{_op(g)} {g['target']:g}x"
            got = "" if g["ratio"] is None else f"{g['ratio']:.2f}x"
        lines.append(f"| {g['goal']} | {target} | {got} | {g['status']} |")
    return "\n".join(lines)


def compare(results: Sequence[dict[str, Any]], old_path: Path) -> str:
    """castar's change per case against an earlier JSON file of ``python -m bench``."""
    old = json.loads(old_path.read_text())
    before = {r["case"]: r for r in old.get("results", []) if r["tool"] == "castar" and r["ok"]}
    lines = [
        f"castar against {old_path} ({old.get('date', '?')}, preset {old.get('preset', '?')}):",
        "",
        "| case | before MB/s | now MB/s | change | before RSS MiB | now RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r["tool"] != "castar":
            continue
        b = before.get(r["case"])
        if b is None or not r["ok"]:
            now = _fmt_rate(r["mbps"]) if r["ok"] else "failed"
            lines.append(f"| {r['case']} | | {now} | | | {r['rss_kib'] / 1024:.0f} |")
            continue
        change = r["mbps"] / b["mbps"] - 1 if b["mbps"] else 0.0
        lines.append(
            f"| {r['case']} | {_fmt_rate(b['mbps'])} | {_fmt_rate(r['mbps'])} | {change:+.0%} "
            f"| {b['rss_kib'] / 1024:.0f} | {r['rss_kib'] / 1024:.0f} |"
        )
    return "\n".join(lines)


def plot(results: Sequence[Result], path: Path, title: str) -> str:
    """Draw MB/s per case and tool as grouped bars (log scale) into ``path``.

    Returns:
        ``""`` when drawn, else why not (matplotlib missing: ``pip install castar[bench]``).
    """
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return "--plot needs matplotlib: pip install -e '.[bench]'"
    cases = list(dict.fromkeys(r.case for r in results))
    tools = [t for t in TOOL_ORDER if any(r.tool == t for r in results)]
    tools += sorted({r.tool for r in results} - set(tools))
    colors = {t: f"C{i % 10}" for i, t in enumerate(tools)}
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(cases) + 2), 5))
    labelled: set[str] = set()
    # Bars packed per case (only the tools measured in it, in TOOL_ORDER), centred on it.
    rows = [
        [r for t in tools if (r := _find(results, case, t)) is not None and r.mbps > 0]
        for case in cases
    ]
    width = 0.8 / max((len(here) for here in rows), default=1)
    for j, here in enumerate(rows):
        for i, r in enumerate(here):
            label = r.tool if r.tool not in labelled else None
            labelled.add(r.tool)
            x = j + (i - (len(here) - 1) / 2) * width
            ax.bar(x, r.mbps, width, color=colors[r.tool], label=label)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("MB/s (10^6 bytes/s, log scale)")
    ax.set_title(title)
    ax.legend(fontsize="small", ncols=min(len(tools), 4))
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ""
