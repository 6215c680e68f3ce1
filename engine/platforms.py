"""Platforms: the value, specifier parsing and formatting, matchers, the host.

The public face of everything that decides "does this manifest suit that machine":
``_platform`` owns the ``Platform`` value, PLAT-1..6 parsing, NORM-1..3, FMT-1..2, the
OCI JSON form and HOST-1..3; ``_matchers`` owns MATCH-1..7 and HOST-4. Import platform
names from here. Pure: no I/O library (no anyio), nothing from the store but its errors.
"""

from __future__ import annotations

from castar.engine._matchers import (
    ALL,
    MatchComparer,
    Matcher,
    any_of,
    match_any_with_preference,
    only,
    only_os,
    only_strict,
    ordered,
    sort_best_first,
)
from castar.engine._platform import (
    HOST_ENV,
    KNOWN_ARCHITECTURES,
    KNOWN_OS,
    Platform,
    format,
    format_all,
    from_json,
    host,
    normalize,
    parse,
    parse_all,
    parse_list,
    pinned_host,
    set_host,
    to_json,
)

__all__ = [
    "ALL", "HOST_ENV", "KNOWN_ARCHITECTURES", "KNOWN_OS", "MatchComparer", "Matcher", "Platform",
    "any_of", "format", "format_all", "from_json", "host", "match_any_with_preference",
    "normalize", "only", "only_os", "only_strict", "ordered", "parse", "parse_all", "parse_list",
    "pinned_host", "set_host", "sort_best_first", "to_json",
]  # fmt: skip
