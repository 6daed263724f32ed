"""Clean text: what every free-text field the pipeline accepts from outside must be.

A string is clean when it holds no control character (C0 ``U+0000``–``U+001F``, ``U+007F``, C1
``U+0080``–``U+009F``; tab and newline included) and no surrogate code point (``U+D800``–``U+DFFF``). A Python
string decoded from valid UTF-8 never holds a surrogate; one gets in through a JSON escape such as ``"\\ud800"``
or an error handler like ``surrogateescape``, and is an unpaired half that no UTF-8 encoder will write.

Pure and dependency-free, so the gateway's models, ``pipeline publish`` and the domain can all apply the same rule.
"""

from __future__ import annotations

import re

_NOT_CLEAN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why ``value`` is not clean text (the first offending character, named and placed), or None when it is."""
    match = _NOT_CLEAN.search(value)
    if match is None:
        return None
    code = ord(match.group())
    kind = "an unpaired surrogate" if 0xD800 <= code <= 0xDFFF else "a control character"
    return f"contains {kind} (U+{code:04X}) at position {match.start()}"


def is_clean_text(value: str) -> bool:
    """True when ``value`` holds no control character and no unpaired surrogate (see the module's rule)."""
    return _NOT_CLEAN.search(value) is None
