"""Parsing JSON from untrusted files (safetensors headers, manifests, shard indexes) with
its nesting bounded before the parser sees it: ``json.loads`` recurses once per level, so
100,000 nested brackets would end in RecursionError (or, with a raised recursion limit, a
crashed interpreter) instead of a clear error."""
from __future__ import annotations

import json
import re
from typing import Any, Union

import numpy as np

__all__ = ["MAX_JSON_DEPTH", "MAX_INT_DIGITS", "json_depth", "loads_bounded", "UntrustedJSONError"]

#: deepest nesting accepted; our headers are 3 levels deep, manifests about 7
MAX_JSON_DEPTH = 64
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_CHUNK = 1 << 22


class UntrustedJSONError(ValueError):
    """Not JSON, or nested deeper than MAX_JSON_DEPTH; callers turn it into CheckpointError."""


def json_depth(raw: bytes) -> int:
    """The deepest bracket nesting of JSON text, brackets inside strings not counted
    (an unterminated string's brackets are: such text is not JSON anyway).  Linear time,
    memory bounded by chunks."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for start in range(0, len(brackets), _CHUNK):
        chunk = np.frombuffer(brackets, dtype=np.uint8, count=min(_CHUNK, len(brackets) - start), offset=start)
        steps = np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1).astype(np.int64)
        running = np.cumsum(steps) + depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
    return deepest


#: the most digits an integer of a file may have (our headers' and manifests' fit 64 bits: 20)
MAX_INT_DIGITS = 40


def _bounded_int(digits: str) -> int:
    """An integer of the JSON text (Python's own limit, 4300 digits, raised a bare ValueError)."""
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise UntrustedJSONError(f"an integer of {len(digits.lstrip('-'))} digits (limit {MAX_INT_DIGITS})")
    return int(digits)


def loads_bounded(text: Union[bytes, str], max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` of untrusted text.  Raises UntrustedJSONError for text that is not
    UTF-8 JSON, is nested deeper than ``max_depth`` (checked before parsing) or holds an
    integer of more than MAX_INT_DIGITS digits."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    depth = json_depth(raw)
    if depth > max_depth:
        raise UntrustedJSONError(f"JSON nested {depth} levels deep (limit {max_depth})")
    try:
        return json.loads(raw.decode("utf-8"), parse_int=_bounded_int)
    except UntrustedJSONError:
        raise
    except (UnicodeDecodeError, ValueError) as exc:  # (JSONDecodeError is a ValueError)
        raise UntrustedJSONError(f"not valid JSON: {exc}") from None
    except RecursionError:  # not reached given the depth check; kept as the last line of defence
        raise UntrustedJSONError(f"JSON nested too deep (limit {max_depth})") from None
