"""JSON as Go's ``encoding/json`` does it: the canonical encoder (DESC-2), strict member readers."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from json.encoder import encode_basestring
from typing import Any, Final

from castar.store.errors import InvalidArgument, MalformedManifest

_MAX_INT64: Final = (1 << 63) - 1


# --- canonical encoder (DESC-2) -----------------------------------------------------------------


class Struct(dict[str, Any]):
    """A JSON object written in insertion order like a Go struct (DESC-1); other maps are sorted."""

    __slots__ = ()


_SURROGATE = re.compile("[\ud800-\udfff]")
_HTML_ESCAPES: Final = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_HTML = re.compile("[<>&\u2028\u2029]")


def _json_string(s: str) -> str:
    if _SURROGATE.search(s):
        # Go replaces invalid UTF-8 with U+FFFD; a lone surrogate is Python's equivalent.
        s = _SURROGATE.sub("\ufffd", s)
    out = encode_basestring(s)
    if _HTML.search(out):
        out = _HTML.sub(lambda m: _HTML_ESCAPES[m.group()], out)
    return out


def _json_float(f: float) -> str:
    # Go's encoding/json: fixed notation for 1e-6 <= |f| < 1e21, else strconv's shortest
    # 'e' form with "e-07" trimmed to "e-7". Python's repr gives the same shortest digits.
    if math.isnan(f) or math.isinf(f):
        raise InvalidArgument(f"json: unsupported value: {f!r}")
    r = repr(f)
    if f == 0 or 1e-6 <= abs(f) < 1e21:
        from decimal import Decimal

        text = format(Decimal(r), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    mant, _, exp = r.partition("e")
    if mant.endswith(".0"):
        mant = mant[:-2]
    if exp.startswith("-0"):
        exp = "-" + exp[2:]
    return f"{mant}e{exp}"


def _encode(obj: object, out: Callable[[str], object]) -> None:
    if obj is None:
        out("null")
    elif isinstance(obj, str):
        out(_json_string(obj))
    elif obj is True:
        out("true")
    elif obj is False:
        out("false")
    elif isinstance(obj, int):
        out(str(int(obj)))
    elif isinstance(obj, float):
        out(_json_float(obj))
    elif isinstance(obj, Struct):
        _encode_members(obj.items(), out)
    elif isinstance(obj, Mapping):
        for k in obj:
            if not isinstance(k, str):
                raise InvalidArgument(f"json: unsupported map key {k!r}")
        _encode_members(sorted(obj.items()), out)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        out('"' + base64.b64encode(obj).decode("ascii") + '"')
    elif isinstance(obj, (list, tuple)):
        out("[")
        for i, item in enumerate(obj):
            if i:
                out(",")
            _encode(item, out)
        out("]")
    elif hasattr(obj, "to_json"):
        _encode(obj.to_json(), out)
    else:
        raise InvalidArgument(f"json: unsupported type {type(obj).__name__}")


def _encode_members(items: Iterable[tuple[str, object]], out: Callable[[str], object]) -> None:
    out("{")
    for i, (k, v) in enumerate(items):
        if i:
            out(",")
        out(_json_string(k))
        out(":")
        _encode(v, out)
    out("}")


def canonical_json(obj: object) -> bytes:
    """Encode ``obj`` byte-for-byte as Go's ``json.Marshal`` would (DESC-2).

    ``bytes`` are base64 (Go ``[]byte``), objects with ``to_json()`` are encoded through it;
    a value JSON cannot hold (NaN, a non-string key, another type) is ``InvalidArgument``.
    """
    parts: list[str] = []
    _encode(obj, parts.append)
    return "".join(parts).encode("utf-8")


# --- strict readers -----------------------------------------------------------------------------
# Go's encoding/json rules: an absent member and ``null`` both give the zero value, a
# member of another JSON type is an error; unknown members are ignored.


def kind(v: object) -> str:
    """The JSON type of a decoded value, as messages name it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def malformed(where: str, key: str, want: str, v: object) -> MalformedManifest:
    """The error for member ``key`` of ``where`` holding ``v`` instead of ``want``."""
    return MalformedManifest(f"{where}: {key}: expected {want}, found {kind(v)}")


def get_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    """A string member (``""`` when absent)."""
    v = obj.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise malformed(where, key, "string", v)
    return v


def get_int(obj: Mapping[str, Any], key: str, where: str) -> int:
    """An int64 member (0 when absent)."""
    v = obj.get(key)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int):
        raise malformed(where, key, "integer", v)
    if not -_MAX_INT64 - 1 <= v <= _MAX_INT64:
        raise MalformedManifest(f"{where}: {key}: {v} overflows int64")
    return v


def get_strs(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    """An array-of-strings member (``()`` when absent)."""
    v = obj.get(key)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise malformed(where, key, "array of strings", v)
    return tuple(v)


def get_map(obj: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    """A string-to-string object member (``{}`` when absent; a ``null`` value reads ``""``)."""
    v = obj.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(x is None or isinstance(x, str) for x in v.values()):
        raise malformed(where, key, "object of strings", v)
    # Go stores a null map value as the zero value "".
    return {k: "" if x is None else x for k, x in v.items()}


def object_of(v: object, where: str) -> dict[str, Any]:
    """``v`` when it is a JSON object, else ``MalformedManifest``."""
    if not isinstance(v, dict):
        raise MalformedManifest(f"{where}: expected object, found {kind(v)}")
    return v


def load_object(data: bytes, where: str, limit: int) -> dict[str, Any]:
    """A JSON object of at most ``limit`` bytes (checked first); bad UTF-8 reads as U+FFFD."""
    if len(data) > limit:
        raise MalformedManifest(
            f"{where}: document of {len(data)} bytes exceeds the {limit} byte limit"
        )
    try:
        text = bytes(data).decode("utf-8", errors="replace")
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedManifest(f"{where}: invalid JSON: {exc}") from exc
    return object_of(obj, where)


def _reject_constant(name: str) -> object:
    raise ValueError(f"invalid JSON literal {name}")
