"""
The write buffer cap: while more than C{limits.write_buffer_bytes} wait to
be sent to a peer that does not read them, the connection stops reading that
peer's requests (a Twisted push producer registered with the transport), and
reads again once the buffer has drained.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

log = Logger()


@implementer(IPushProducer)
class ReadThrottle:
    """
    Stops reading a connection's requests while its transport's write buffer
    is over the cap (the transport calls L{pauseProducing}), and reads again
    once it has drained (L{resumeProducing}).

    @ivar paused: whether reading is stopped now.
    @ivar pauses: how many times reading was stopped.
    """

    def __init__(self, transport: Any, peer: str) -> None:
        self.transport = transport
        self.peer = peer
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        self.pauses += 1
        if self.pauses == 1:
            log.info("{peer} is not reading its replies: no more requests are read "
                     "from it until they drain (limits.write_buffer_bytes)", peer=self.peer)
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.paused = False


def set_write_cap(transport: Any, limit: int) -> bool:
    """
    Make a socket transport ask its producer to pause once more than
    C{limit} bytes wait in its write buffer.

    Twisted pauses at C{bufferSize} bytes (64 KiB), which is also how much
    each read asks for; raising C{bufferSize} would make every C{recv}
    allocate C{limit} bytes.  So the check itself is replaced on this one
    transport (under TLS: the socket transport below it).

    @param transport: the protocol's transport.
    @param limit: the cap in bytes.
    @return: whether the transport is one whose check could be replaced
        (a Twisted C{FileDescriptor}); other transports keep their own
        threshold.
    """
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    if not callable(getattr(transport, "_isSendBufferFull", None)) or \
            not hasattr(transport, "dataBuffer") or not hasattr(transport, "_tempDataLen"):
        return False

    def is_full() -> bool:
        return (len(transport.dataBuffer) - transport.offset
                + transport._tempDataLen) > limit

    transport._isSendBufferFull = is_full
    return True
