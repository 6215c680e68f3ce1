"""Every rule a Python file cites resolves inside the repository.

A behaviour id (``IMP-4``, ``TV-65``) cited in castar/, store/, engine/, tests/ or bench/ must be
defined in docs/behaviour.md, as a bold id at the start of a rule (``- **IMP-4** …``). A range
``GC-1..10`` or ``EDGE-1/3`` cites each id written in it (``GC-1`` and ``GC-10``; ``EDGE-1`` and
``EDGE-3``). House rules are cited by the anchors of docs/design-rules.md, never by documents
outside the repository.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEHAVIOUR = ROOT / "docs" / "behaviour.md"

#: The folders whose Python files are scanned. castar/store and castar/engine are symlinks to
#: store/ and engine/, which are scanned once, under their own names.
SCANNED = ("castar", "store", "engine", "tests", "bench")

_PREFIXES = (
    "TV|EDGE|IMP|ING|EXP|GC|MATCH|LEASE|CS|SCHED|SAVE|PLAT|MT|LOAD|IMG|DIG|TAR|DESC|LAY|HOST|TREE"
    "|NS|NORM|ERR|FMT|LBL"
)
#: An id, or a range of ids sharing a prefix: ``IMP-5..9``, ``EDGE-1/3/4``.
_CITED = re.compile(rf"\b({_PREFIXES})-(\d+)((?:(?:\.\.|/)\d+)*)\b")
_DEFINED = re.compile(rf"^\s*- \*\*(({_PREFIXES})-\d+)\*\*", re.MULTILINE)
_OUTSIDE = re.compile(r"SEMANTICS|STYLE\.md|STYLE §|IO-LIMITS|DESIGN\.md|DESIGN §|\.\./shared")


def python_files() -> Iterator[Path]:
    """The scanned Python files, each once (symlinked folders are not followed)."""
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            folders = path.relative_to(ROOT).parents
            if not any((ROOT / folder).is_symlink() for folder in folders):
                yield path


def cited_ids(line: str) -> Iterator[str]:
    """The ids a line cites, ranges spelt out at their written ends."""
    for m in _CITED.finditer(line):
        prefix = m.group(1)
        yield f"{prefix}-{m.group(2)}"
        for number in re.findall(r"\d+", m.group(3)):
            yield f"{prefix}-{number}"


def defined_ids() -> set[str]:
    """The ids docs/behaviour.md defines."""
    return {m.group(1) for m in _DEFINED.finditer(BEHAVIOUR.read_text(encoding="utf-8"))}


def where(pattern: re.Pattern[str] | None = None) -> Iterator[tuple[str, str]]:
    """(``file:line``, line text) for each line of the scanned files, or of those matching."""
    for path in python_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, text in enumerate(lines, start=1):
            if pattern is None or pattern.search(text):
                yield f"{path.relative_to(ROOT)}:{number}", text


def test_the_scan_skips_the_symlinked_packages() -> None:
    scanned = {p.relative_to(ROOT).parts[:2] for p in python_files()}
    assert ("castar", "store") not in scanned
    assert ("castar", "engine") not in scanned
    assert any(parts[0] == "store" for parts in scanned)


def test_cited_ranges_name_both_ends() -> None:
    line = "# IMP-5..9, EDGE-1/3/4 and ING-8.6 (TV-8..37)"
    assert list(cited_ids(line)) == [
        "IMP-5",
        "IMP-9",
        "EDGE-1",
        "EDGE-3",
        "EDGE-4",
        "ING-8",
        "TV-8",
        "TV-37",
    ]


def test_every_cited_rule_id_is_defined_in_behaviour_md() -> None:
    defined = defined_ids()
    undefined: dict[str, str] = {}
    for place, text in where(_CITED):
        for rule in cited_ids(text):
            if rule not in defined:
                undefined.setdefault(rule, place)
    listing = "\n".join(f"  {rule} ({place})" for rule, place in sorted(undefined.items()))
    assert not undefined, f"rule ids cited but not defined in docs/behaviour.md:\n{listing}"


def test_no_python_file_cites_documents_outside_the_repository() -> None:
    this = Path(__file__).relative_to(ROOT).as_posix()  # its pattern names them
    cites = [
        f"  {place}: {text.strip()}"
        for place, text in where(_OUTSIDE)
        if not place.startswith(f"{this}:")
    ]
    listing = "\n".join(cites)
    assert not cites, f"cite docs/behaviour.md ids or docs/design-rules.md anchors:\n{listing}"
