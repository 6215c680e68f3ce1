"""README.md: the set-up commands CI runs exist, and the Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from castar.engine import synth

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
EXAMPLES = re.findall(r"^```python\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def test_readme_has_the_two_setup_commands_ci_extracts() -> None:
    # .ci/run takes the first "    $ " line mentioning `castar demo`, then the one with pytest.
    commands = re.findall(r"^    \$ (.*)$", README, flags=re.MULTILINE)
    demo = next(c for c in commands if "castar demo" in c)
    tests = next(c for c in commands if "pytest" in c)
    assert "pip install" in demo
    assert demo.endswith("castar demo")
    assert ".[test]" in tests
    assert commands.index(demo) < commands.index(tests)


def test_readme_shows_an_asyncio_and_a_trio_example() -> None:
    assert len(EXAMPLES) == 2
    assert "asyncio.run(main())" in EXAMPLES[0]
    assert "trio.run(main)" in EXAMPLES[1]


@pytest.mark.parametrize("example", EXAMPLES, ids=["asyncio", "trio"])
def test_readme_example_runs_as_written(
    example: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The examples read alpine.tar from the working directory; a synthetic one stands in.
    spec = synth.SynthSpec(
        name="alpine:latest",
        platforms=("linux/amd64", "linux/arm64", "linux/arm/v6"),
        layers=2,
        layer_size=32 << 10,
    )
    synth.write_path(spec, tmp_path / "alpine.tar")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    if "asyncio" in example:
        assert "['docker.io/library/alpine:latest']" in out
        assert "bytes written" in out
        assert (tmp_path / "alpine-arm64.tar").stat().st_size > 0
    else:
        assert out.endswith("blobs intact\n")
        assert (tmp_path / "alpine-all.tar").stat().st_size > 0
