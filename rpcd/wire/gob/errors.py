"""
The exceptions of L{rpcd.wire.gob}: every malformed input raises L{GobError}.
"""

from __future__ import annotations


class GobError(ValueError):
    """
    A malformed gob stream, or one that breaks this decoder's limits.  The
    message starts with C{"gob: "} and names what was wrong.
    """


class GobTypeMismatch(GobError):
    """
    A well-formed value whose wire type does not fit the requested L{GoType}.
    The whole message was consumed, so the stream is still usable.
    """


class GobEncodeError(GobError, TypeError):
    """
    A Python value that cannot be encoded as the given Go type (or whose Go
    type cannot be guessed).  Nothing was encoded and the L{Encoder} is
    unchanged.
    """
