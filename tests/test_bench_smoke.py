"""``python -m bench`` (issue 7): the tiny preset runs castar's cases end to end, and the
report's goal, table and --compare logic say what the figures say."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is not part of the wheel: import it from the checkout
    sys.path.insert(0, str(REPO))

from bench import _cases, _peers, _report, _workload  # noqa: E402
from bench.harness import Result, Run  # noqa: E402

CASTAR_CASES = set(_cases.CASE_IDS) - set(_cases.NOT_CASTAR_ONLY)
if not Path(_peers.REGISTRY).exists():  # the pull and push cases need the real registry
    CASTAR_CASES -= set(_cases.REGISTRY_CASES)
START_CASES = {"start-version", "start-help", "start-images"}  # timed, no bytes


def _python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    work, out = str(tmp_path / "work"), str(tmp_path / "out.json")
    return _python(
        *("-m", "bench", "--preset", "tiny", "--castar-only", "--runs", "1"),
        *("--workdir", work, "--json", out, *args),
    )


def test_tiny_preset_castar_only_times_every_case_and_writes_json(tmp_path: Path) -> None:
    proc = _bench(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["preset"] == "tiny"
    results = doc["results"]
    assert {r["case"] for r in results} == CASTAR_CASES
    assert {r["tool"] for r in results} == {"castar"}  # --castar-only: no baseline, no peer
    for r in results:
        assert r["ok"], r
        assert len(r["runs"]) == 1
        assert r["runs"][0]["rc"] == 0
        assert r["runs"][0]["rss_kib"] > 10 * 1024, r  # a Python process, measured by time -v
        assert r["runs"][0]["seconds"] > 0, r
        if r["case"] not in START_CASES:
            assert r["bytes"] > 0, r
            assert r["mbps"] > 0, r
    by_case = {r["case"]: r for r in results}
    # Load cases count the input archive; a pipe save counts what the file save wrote.
    assert by_case["load-file"]["bytes"] == doc["archive"]["size"]
    assert by_case["save-pipe"]["bytes"] == by_case["save-file"]["bytes"]
    assert (
        by_case["save-one"]["bytes"] < by_case["save-two"]["bytes"] < by_case["save-file"]["bytes"]
    )
    assert by_case["small-load"]["bytes"] < 400_000 < by_case["alpine-load"]["bytes"]
    if "push-16" in by_case:  # every blob of the image, also when one platform moves
        assert by_case["pull"]["bytes"] == by_case["pull-one"]["bytes"] == by_case["push"]["bytes"]
        assert "in every push: uploaded 1x" in by_case["push-16"]["note"]
    assert "| load-file | castar |" in proc.stdout  # the Markdown table on stdout
    # castar runs as installed programs do: with bytecode caches, kept out of the source tree
    assert list((tmp_path / "work" / "pycache").rglob("castar/_cli*.pyc")), "no bytecode cache"
    secs = by_case["start-help"]["runs"][0]["seconds"]
    assert f"| start-help | castar | {secs:.3f} | {secs:.3f} |" in proc.stdout  # every round


def test_a_failing_castar_case_makes_the_bench_exit_non_zero(tmp_path: Path) -> None:
    first = _bench(tmp_path, "--cases", "load-file")  # writes the archives it then reuses
    assert first.returncode == 0, first.stderr[-2000:]
    gz = (
        tmp_path / "work" / "archives" / _workload.PRESETS["tiny"].workload.key() / "archive.tar.gz"
    )
    gz.write_bytes(gz.read_bytes()[:5000])  # a truncated gzip archive: castar load must fail
    proc = _bench(tmp_path, "--cases", "load-gzip")
    assert proc.returncode == 1
    assert "castar failed in load-gzip" in proc.stderr
    (r,) = json.loads((tmp_path / "out.json").read_text())["results"]
    assert not r["ok"]
    assert r["runs"][0]["rc"] != 0
    assert "| load-gzip | castar | castar load -i FILE.gzip | failed |" in proc.stdout


def test_a_run_over_the_timeout_is_killed_and_fails_the_case(tmp_path: Path) -> None:
    proc = _bench(tmp_path, "--cases", "load-file", "--timeout", "0.01")
    assert proc.returncode == 1
    (r,) = json.loads((tmp_path / "out.json").read_text())["results"]
    assert not r["ok"]
    assert r["note"] == "timed out after 0.01 s"
    assert len(r["runs"]) == 1  # no second attempt after a failure


def _result(
    case: str, tool: str, seconds: float, nbytes: int = 10**9, rc: int = 0, rss: int = 50 * 1024
) -> Result:
    return Result(
        case,
        tool,
        "castar" if tool == "castar" else "peer",
        tool,
        "cmd",
        nbytes,
        [Run(seconds, rss, rc)],
    )


def test_goals_compare_castar_rates_with_the_named_tool_in_the_same_run() -> None:
    results = [
        _result("load-file", "castar", 1.0),
        _result("load-shm", "castar", 1.0),
        _result("load-shm", "python", 1.1),  # castar only 1.1x: the 1.2x goal is missed
        _result("load-file", "ctr", 20.0),  # 20x: the 10x goal is met
        _result("load-one", "castar", 0.2),  # 5x the full load: met
        _result("save-file", "castar", 1.0, rss=120 * 1024),  # RSS over 100 MiB: missed
    ]
    goals = {g["id"]: g for g in _report.evaluate(results)}
    assert goals["shm-vs-sync"]["status"] == "missed"
    assert goals["shm-vs-sync"]["ratio"] == pytest.approx(1.1)
    assert goals["load-vs-ctr"]["status"] == "met"
    assert goals["one-vs-full"]["status"] == "met"
    assert goals["one-vs-full"]["ratio"] == pytest.approx(5.0)
    assert goals["save-vs-tar"]["status"] == "not measured"
    assert goals["rss"]["status"] == "missed"
    table = _report.table(results, list(goals.values()))
    assert "| load-file | ctr | ctr | 50 | 50 | ±0% | 20.00x | 50 | >= 10x: met |" in table
    assert (
        "| load-shm | python | python | 909 | 909 | ±0% | 1.10x | 50 | >= 1.2x: missed |" in table
    )


def test_time_goals_compare_seconds_and_the_large_preset_has_its_own_targets() -> None:
    results = [
        _result("start-floor", "python", 0.02, nbytes=0),
        _result("start-floor", "anyio", 0.2, nbytes=0),
        _result("start-version", "castar", 0.05, nbytes=0),  # 2.5x python -c pass: missed
        _result("start-images", "castar", 0.28, nbytes=0),  # 1.4x the anyio floor: met
        _result("small-load", "castar", 0.25, nbytes=280_000),
        _result("busy-load", "castar", 0.5, nbytes=280_000),  # 2x its quiet time: missed
        _result("load-file", "castar", 1.0),
        _result("load-file", "dd", 1.25),  # castar 1.25x dd's rate... as a time: 0.8
        _result("load-file", "python-syncfs", 0.9),
        _result("save-file", "castar", 1.0),
        _result("save-file", "tar", 1.2),  # castar 1.2x tar: meets 1.0, misses large's 1.5
    ]
    medium = {g["id"]: g for g in _report.evaluate(results, "medium")}
    assert medium["start-version"]["status"] == "missed"
    assert medium["start-version"]["ratio"] == pytest.approx(2.5)
    assert medium["start-images"]["status"] == "met"
    assert medium["small-load"]["status"] == "met"  # 1.25x the anyio floor
    assert medium["busy-load"]["status"] == "missed"
    assert medium["busy-load"]["ratio"] == pytest.approx(2.0)
    assert medium["load-vs-dd"]["status"] == "met"  # 1.25x >= 0.7x
    assert medium["save-vs-tar"]["status"] == "met"
    assert "many-vs-syncfs" not in medium  # only the many preset has the 5,000-layer goal
    large = {g["id"]: g for g in _report.evaluate(results, "large")}
    assert large["save-vs-tar"]["target"] == 1.5
    assert large["save-vs-tar"]["status"] == "missed"
    assert large["load-vs-dd"]["target"] == 0.9
    many = {g["id"]: g for g in _report.evaluate(results, "many")}
    assert many["many-vs-syncfs"]["status"] == "missed"  # 0.9x < 0.94x
    table = _report.table(results, list(medium.values()))
    assert "| start-version | castar | castar | - | - | ±0% |  | 50 | <= 2x: missed;" in table
    goals = _report.goals_table(list(medium.values()))
    assert "| castar --version <= 2 x python -c pass | <= 2x | 2.50x | missed |" in goals


def test_registry_goals_take_the_lower_bound_and_push_16_checks_itself() -> None:
    results = [
        _result("pull", "castar", 1.0),
        _result("pull", "curl", 0.5),  # 2,000 MB/s
        _result("pull", "dd", 1.25),  # 800 MB/s: the lower bound; castar 1.25x of it
        _result("pull-one", "castar", 0.1),  # 10x the full pull: met
        _result("push", "castar", 2.0),
        _result("push", "curl", 1.0),  # castar at 0.5x curl's upload: missed
        _result("push-16", "castar", 1.0),
    ]
    goals = {g["id"]: g for g in _report.evaluate(results, "tiny")}
    assert (goals["pull-vs-bound"]["tool"], goals["pull-vs-bound"]["ratio"]) == (
        "dd",
        pytest.approx(1.25),
    )
    assert goals["pull-one-vs-pull"]["ratio"] == pytest.approx(10)
    wanted = {
        "pull-vs-bound": "met",
        "push-vs-curl": "missed",
        "push-16-once": "met",
        "pull-vs-skopeo": "not measured",
    }
    assert {k: goals[k]["status"] for k in wanted} == wanted
    table = _report.table(results, list(goals.values()))
    assert "| pull | dd | dd | 800 | 800 | ±0% | 1.25x | 50 | >= 0.8x: met |" in table
    assert "| push-16 | castar | castar | 1,000 | 1,000 | ±0% | 1.00x | 50 | met;" in table
    without_dd = {g["id"]: g for g in _report.evaluate(results[:2], "tiny")}
    assert without_dd["pull-vs-bound"]["status"] == "not measured"  # both bounds or none
    failed = [*results[:-1], _result("push-16", "castar", 1.0, rc=1)]  # a blob went up twice
    assert {g["id"]: g for g in _report.evaluate(failed)}["push-16-once"]["status"] == "missed"
    assert {g["id"]: g for g in _report.evaluate(results[:-1])}["push-16-once"]["status"] == (
        "not measured"
    )


def test_a_failed_peer_is_not_measured_and_shows_as_failed() -> None:
    results = [_result("load-file", "castar", 1.0), _result("load-file", "ctr", 3.0, rc=1)]
    goals = {g["id"]: g for g in _report.evaluate(results)}
    assert goals["load-vs-ctr"]["status"] == "not measured"
    assert "| load-file | ctr | ctr | failed |" in _report.table(results, list(goals.values()))


def test_compare_prints_castars_change_per_case(tmp_path: Path) -> None:
    old = {
        "date": "then",
        "preset": "tiny",
        "results": [
            _result("load-file", "castar", 2.0).to_json(),
            _result("load-file", "ctr", 9.0).to_json(),
        ],
    }
    (tmp_path / "old.json").write_text(json.dumps(old))
    now = [
        _result("load-file", "castar", 1.0).to_json(),
        _result("save-file", "castar", 1.0).to_json(),
    ]
    text = _report.compare(now, tmp_path / "old.json")
    assert "| load-file | 500 | 1,000 | +100% | 50 | 50 |" in text
    assert "| save-file | | 1,000 | | | 50 |" in text


def test_report_reprints_a_saved_run_without_running_anything(tmp_path: Path) -> None:
    results = [_result("load-file", "castar", 1.0), _result("load-file", "ctr", 12.0)]
    doc = {
        "date": "2026-01-02T03:04:05+00:00",
        "preset": "large",
        "runs": 1,
        "workload": {"describe": "8 platforms x 4 layers x 64 MiB"},
        "archive": {"size": 10**9, "blobs": 50},
        "results": [r.to_json() for r in results],
        "goals": _report.evaluate(results),
        "skipped": [{"case": "*", "tool": "umoci", "note": "umoci not installed"}],
    }
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(doc))
    proc = _python("-m", "bench", "--report", str(saved), "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "preset `large`, 2026-01-02 03:04 UTC" in proc.stdout
    assert "| load-file | ctr | ctr | 83 | 83 | ±0% | 12.00x | 50 | >= 10x: met |" in proc.stdout
    assert "skipped umoci in *: umoci not installed" in proc.stdout
    assert not (tmp_path / "w").exists()  # nothing generated, nothing run


def test_plot_draws_a_png_or_says_matplotlib_is_missing(tmp_path: Path) -> None:
    results = [_result("load-file", "castar", 1.0), _result("load-file", "tar", 0.5)]
    png = tmp_path / "rates.png"
    why = _report.plot(results, png, "test")
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib" in why
        assert "[bench]" in why
        assert not png.exists()
    else:
        assert why == ""
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not Path(_peers.REGISTRY).exists(), reason="needs docker-registry")
def test_bench_http_moves_the_blob_both_ways_with_each_installed_client() -> None:
    proc = _python("-m", "bench.bench_http", "--mib", "1", "--rounds", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for client in ("httpx", "httpx2"):
        if importlib.util.find_spec(client) is None:
            assert f"- {client} is not installed: not measured" in proc.stdout
            continue
        for backend in ("asyncio", "trio"):
            for direction in ("GET", "PUT"):
                row = f"| {client} | {backend} | {direction} | "
                (line,) = [x for x in proc.stdout.splitlines() if x.startswith(row)]
                assert len(line.split("|")[5].split(" / ")) == 2  # every round's MB/s
        assert f"| {client} | " in proc.stdout.split("import + first AsyncClient()")[1]
