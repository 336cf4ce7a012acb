"""
Canaries for the Twisted private names rpcd relies on
(L{rpcd.core.twistedcompat}): each fails loudly when a Twisted release
changes one, so the fallback is noticed and the code revisited.
"""

from __future__ import annotations

import io
import socket
from types import SimpleNamespace

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.tcp import Connection
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import (
    FilteringLogObserver,
    LogLevelFilterPredicate,
    LogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool

from rpcd.core.twistedcompat import (
    NOT_TEXT,
    SOCKET_WRITE_INTERNALS,
    QuietHTTPConnectionPool,
    cap_send_buffer,
    direct_writer,
    drop_unsent,
    filtered_observer,
    log_observers,
    observer_file,
    queued_bytes,
    raise_synchronously,
    socket_transport,
    text_log_time_format,
    waiting_for_port,
)


class _Refusing(MemoryReactor):
    def listenTCP(self, port: int, factory: object, backlog: int = 50, interface: str = "") -> None:  # type: ignore[override]
        raise CannotListenError(interface, port, OSError("address in use"))


@implementer(IPushProducer)
class _Producer:
    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


def _connection(test: SynchronousTestCase) -> tuple[Connection, socket.socket]:
    ours, theirs = socket.socketpair()
    test.addCleanup(ours.close)
    test.addCleanup(theirs.close)
    theirs.setblocking(False)
    connection = Connection(ours, Protocol(), reactor=MemoryReactor())
    connection.connected = True
    return connection, theirs


def _descriptor() -> FileDescriptor:
    fd = FileDescriptor(reactor=MemoryReactor())
    fd.connected = True
    return fd


def _listener(reactor: MemoryReactor) -> StreamServerEndpointService:
    return StreamServerEndpointService(TCP4ServerEndpoint(reactor, 0), Factory.forProtocol(Protocol))


class CanaryTests(SynchronousTestCase):
    """
    Twisted still has what rpcd reaches into.
    """

    def test_waiting_for_port(self) -> None:
        """A started StreamServerEndpointService keeps a Deferred of its port in _waitingForPort."""
        listener = _listener(MemoryReactor())
        self.assertIsNone(waiting_for_port(listener))
        listener.privilegedStartService()
        waiting = waiting_for_port(listener)
        self.assertIsInstance(waiting, Deferred)
        self.assertIsNotNone(self.successResultOf(waiting).getHost())

    def test_waiting_for_port_fallback(self) -> None:
        """Without the private attribute, waiting_for_port answers None."""
        self.assertIsNone(waiting_for_port(object()))

    def test_raise_synchronously(self) -> None:
        """With _raiseSynchronously set, a listener that cannot listen raises from privilegedStartService."""
        listener = _listener(_Refusing())
        raise_synchronously(listener)
        self.assertRaises(CannotListenError, listener.privilegedStartService)

    def test_quiet_pool(self) -> None:
        """HTTPConnectionPool still builds its connections with _factory, so the quiet pool's factory is used."""
        self.assertIsNot(QuietHTTPConnectionPool, HTTPConnectionPool,
                         "twisted.web.client changed: _HTTP11ClientFactory or HTTPConnectionPool._factory "
                         "is gone; rpcd falls back to the plain (noisy) pool")
        pool = QuietHTTPConnectionPool(MemoryReactor(), persistent=False)
        self.assertFalse(pool._factory.noisy)


class SocketWriteCanaryTests(SynchronousTestCase):
    """
    Twisted's socket write path still has the names and meaning rpcd's
    write buffer cap and direct send rely on.
    """

    def test_internals_present(self) -> None:
        """A FileDescriptor has every name of SOCKET_WRITE_INTERNALS, so socket_transport finds it."""
        fd = _descriptor()
        missing = [name for name in SOCKET_WRITE_INTERNALS if not hasattr(fd, name)]
        self.assertEqual(missing, [], "twisted.internet.abstract.FileDescriptor changed: rpcd's write "
                         "cap and direct send fall back to Twisted's own threshold and transport.write")
        self.assertIs(socket_transport(fd), fd)

    def test_under_wrapper(self) -> None:
        """socket_transport looks through a ProtocolWrapper (as TLS is) to the socket transport."""
        fd = _descriptor()
        wrapper = ProtocolWrapper(WrappingFactory(Factory.forProtocol(Protocol)), Protocol())
        wrapper.makeConnection(fd)
        self.assertIs(socket_transport(wrapper), fd)

    def test_queued_bytes(self) -> None:
        """Bytes written to a FileDescriptor and not yet sent count in queued_bytes, and drop_unsent frees them."""
        fd = _descriptor()
        fd.write(b"x" * 300)
        fd.writeSequence([b"y" * 20, b"z" * 5])
        self.assertEqual(queued_bytes(fd), 325)
        fd.connected = False
        drop_unsent(fd)
        self.assertEqual(queued_bytes(fd), 0)
        self.assertEqual(fd._tempDataBuffer, [])

    def test_cap_send_buffer(self) -> None:
        """FileDescriptor.write still asks _isSendBufferFull, so cap_send_buffer moves the pause threshold."""
        fd = _descriptor()
        cap_send_buffer(fd, 100)
        producer = _Producer()
        fd.registerProducer(producer, True)
        fd.write(b"x" * 100)
        self.assertFalse(producer.paused)
        fd.write(b"x")
        self.assertTrue(producer.paused, "FileDescriptor no longer consults _isSendBufferFull: "
                        "limits.write_buffer_bytes falls back to Twisted's 64 KiB threshold")

    def test_direct_writer_sends_at_once(self) -> None:
        """On a tcp.Connection with nothing queued, direct_writer sends through writeSomeData without queueing."""
        connection, theirs = _connection(self)
        send = direct_writer(connection)
        assert send is not None, "tcp.Connection lost a socket write internal: no direct send"
        send(b"hello")
        self.assertEqual(queued_bytes(connection), 0)
        self.assertEqual(theirs.recv(100), b"hello")

    def test_direct_writer_keeps_order(self) -> None:
        """With bytes queued already, direct_writer queues behind them instead of sending."""
        connection, theirs = _connection(self)
        send = direct_writer(connection)
        assert send is not None
        connection.write(b"first")
        send(b"second")
        self.assertEqual(queued_bytes(connection), 11)
        self.assertRaises(BlockingIOError, theirs.recv, 100)

    def test_shared_functions(self) -> None:
        """direct_writer and cap_send_buffer bind one shared function to each transport (no closure per connection)."""
        (one, _), (two, _) = _connection(self), _connection(self)
        send_one, send_two = direct_writer(one), direct_writer(two)
        assert send_one is not None and send_two is not None
        self.assertIs(getattr(send_one, "__func__"), getattr(send_two, "__func__"))
        self.assertIs(getattr(send_one, "__self__"), one)
        fd_one, fd_two = _descriptor(), _descriptor()
        cap_send_buffer(fd_one, 100)
        cap_send_buffer(fd_two, 100)
        self.assertIs(getattr(fd_one._isSendBufferFull, "__func__"),
                      getattr(fd_two._isSendBufferFull, "__func__"))
        self.assertIs(getattr(fd_two._isSendBufferFull, "__self__"), fd_two)

    def test_fallbacks(self) -> None:
        """Transports without the internals get None: the cap is not set and writes use transport.write."""
        self.assertIsNone(socket_transport(StringTransport()))
        self.assertIsNone(direct_writer(StringTransport()))
        self.assertIsNone(direct_writer(_descriptor()))  # not a socket Connection
        renamed = SimpleNamespace(**{name: len for name in SOCKET_WRITE_INTERNALS if name != "offset"})
        self.assertIsNone(socket_transport(renamed))  # as if Twisted renamed offset


class LogInternalsCanaryTests(SynchronousTestCase):
    """
    Twisted's logging still keeps the private names twistd's log handling
    in rpcd reads (the level filter, log reopening, the faster text log).
    """

    def test_log_observers(self) -> None:
        """A LogPublisher's observers are the list log_observers returns, changed in place."""
        first, second = [].append, [].append
        publisher = LogPublisher(first)
        observers = log_observers(publisher)
        self.assertEqual(observers, [first], "twisted.logger.LogPublisher changed: rpcd's level "
                         "filter, log reopening and faster text log are skipped")
        assert observers is not None
        observers[0] = second
        publisher({"log_format": "x"})
        self.assertIn(second, publisher._observers)

    def test_observer_file(self) -> None:
        """observer_file finds the file of a FileLogObserver, also under a FilteringLogObserver."""
        out = io.StringIO()
        observer = textFileLogObserver(out)
        self.assertIs(observer_file(observer), out, "twisted.logger.FileLogObserver changed: "
                      "rpcd's log reopening and faster text log are skipped")
        wrapped = FilteringLogObserver(observer, [LogLevelFilterPredicate()])
        self.assertIs(filtered_observer(wrapped), observer)
        self.assertIsNone(observer_file(print))

    def test_text_log_time_format(self) -> None:
        """The time format of textFileLogObserver is read from its formatter; other observers are NOT_TEXT."""
        self.assertEqual(text_log_time_format(textFileLogObserver(io.StringIO(), timeFormat="%H")), "%H",
                         "twisted.logger.textFileLogObserver changed: rpcd's faster text log is skipped")
        self.assertIsNone(text_log_time_format(textFileLogObserver(io.StringIO(), timeFormat=None)))
        self.assertIs(text_log_time_format(jsonFileLogObserver(io.StringIO())), NOT_TEXT)
