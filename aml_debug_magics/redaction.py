"""SAS signatures never reach the screen: one function that every text shown goes through.

A log URL's ``sig=`` value is a credential for the blob. It turns up plain (``&sig=AbC%2Bd``),
URL-encoded once more (``%26sig%3DAbC%252Bd``, a URL inside a URL) and JSON-escaped
(``\\u0026sig=AbC%2Bd``, a URL inside JSON a node printed); all three are redacted.
"""

from __future__ import annotations

from aml_debug_magics.node.snapshot import SAS_SIGNATURE as _SIGNATURE  # one rule, both sides


def redact(text: str) -> str:
    """``text`` with every SAS signature replaced.

    >>> redact("https://a.blob.core.windows.net/c/log.txt?sv=2021&sig=AbC%2Bd&se=x")
    'https://a.blob.core.windows.net/c/log.txt?sv=2021&sig=REDACTED&se=x'
    >>> redact("?sv%3D1%26sig%3DAbC%252Bd%26se%3Dx")
    '?sv%3D1%26sig%3DREDACTED%26se%3Dx'
    >>> redact('{"url": "https://a/b?sv=1\\\\u0026sig=AbC%2Bd\\\\u0026se=x"}')
    '{"url": "https://a/b?sv=1\\\\u0026sig=REDACTED\\\\u0026se=x"}'
    """
    return _SIGNATURE.sub(r"\1REDACTED", text)
