"""
Tests for L{rpcd.service}: exposing methods, calling conventions, the
registry and access policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from rpcd.context import CallContext
from rpcd.errors import InvalidArgument, PermissionDenied, Unauthenticated
from rpcd.service import Kind, ServiceRegistry, describe_service, exposed, service


@dataclass
class Args:
    A: int
    B: int


class Calc:
    """A test service."""

    @exposed
    def Multiply(self, args: Args) -> int:
        """Multiply A by B.

        More text."""
        return args.A * args.B

    @exposed(name="Sum")
    def add_numbers(self, x: int, y: int = 10) -> int:
        return x + y

    @exposed
    def Who(self, ctx: CallContext) -> str:
        return ctx.peer

    @exposed
    def Later(self, n: int) -> Deferred[int]:
        return Deferred()

    @exposed
    async def Stream(self, n: int):  # type: ignore[no-untyped-def]
        yield n

    def hidden(self) -> None:
        """Not exposed."""


@service("Counter", per_connection=True)
class PerConnection:
    def __init__(self, session: object, start: int = 0) -> None:
        self.session = session
        self.count = start

    @exposed
    def Next(self) -> int:
        self.count += 1
        return self.count


class DescribeTests(SynchronousTestCase):
    """What rpcd learns from a service class."""

    def test_only_marked_methods(self) -> None:
        """Only methods marked with @exposed are callable, under their exposed names."""
        spec = describe_service(Calc)
        self.assertEqual(sorted(spec.methods), ["Later", "Multiply", "Stream", "Sum", "Who"])
        self.assertEqual(spec.name, "Calc")

    def test_signature_and_doc(self) -> None:
        """The signature text and the first doc line are worked out for listings."""
        m = describe_service(Calc).methods
        self.assertEqual(m["Multiply"].signature, "Multiply(args: Args) -> int")
        self.assertEqual(m["Multiply"].doc, "Multiply A by B.")
        self.assertEqual(m["Sum"].signature, "Sum(x: int, y: int) -> int")

    def test_context_parameter(self) -> None:
        """A parameter annotated CallContext takes no argument."""
        who = describe_service(Calc).methods["Who"]
        self.assertEqual(who.context_param, "ctx")
        self.assertEqual(who.params, ())

    def test_kinds(self) -> None:
        """An async generator is a server stream; the rest are unary."""
        m = describe_service(Calc).methods
        self.assertEqual(m["Stream"].kind, Kind.SERVER_STREAM)
        self.assertEqual(m["Multiply"].kind, Kind.UNARY)

    def test_deferred_result_hint(self) -> None:
        """A Deferred[int] return hint checks the int it fires with."""
        self.assertIs(describe_service(Calc).methods["Later"].result_hint, int)

    def test_nothing_exposed(self) -> None:
        """A class exposing nothing is refused with its name in the message."""
        class Empty:
            pass
        e = self.assertRaises(TypeError, describe_service, Empty)
        self.assertIn("exposes no methods", str(e))


class CallingTests(SynchronousTestCase):
    """How argument values reach parameters."""

    def setUp(self) -> None:
        self.registry = ServiceRegistry()
        self.registry.add(Calc)

    def method(self, name: str):  # type: ignore[no-untyped-def]
        m = self.registry.lookup_shared(name)
        assert m is not None
        return m

    def test_single_value(self) -> None:
        """A single-parameter method receives the one value, converted."""
        self.assertEqual(self.method("Calc.Multiply").invoke({"A": 6, "B": 7}, None), 42)

    def test_several_params_by_name_or_position(self) -> None:
        """A method with several parameters takes a mapping or a list; defaults apply."""
        m = self.method("Calc.Sum")
        self.assertEqual(m.invoke({"x": 1, "y": 2}, None), 3)
        self.assertEqual(m.invoke([5], None), 15)

    def test_several_params_errors(self) -> None:
        """Missing, unexpected and surplus arguments are named."""
        m = self.method("Calc.Sum")
        self.assertIn("missing argument(s): x", str(self.assertRaises(InvalidArgument, m.invoke, {}, None)))
        self.assertIn("unexpected argument(s): z",
                      str(self.assertRaises(InvalidArgument, m.invoke, {"x": 1, "z": 2}, None)))
        self.assertIn("takes 2 arguments, got 3",
                      str(self.assertRaises(InvalidArgument, m.invoke, [1, 2, 3], None)))

    def test_named_single_param(self) -> None:
        """JSON-RPC named params reach a one-parameter method by name or as the whole object."""
        m = self.method("Calc.Multiply")
        self.assertEqual(m.invoke_named({"A": 2, "B": 3}, None), 6)
        self.assertEqual(m.invoke_named({"args": {"A": 2, "B": 4}}, None), 8)

    def test_positional_single_param(self) -> None:
        """JSON-RPC positional params give a one-parameter method its one value."""
        m = self.method("Calc.Multiply")
        self.assertEqual(m.invoke_positional([{"A": 2, "B": 5}], None), 10)
        self.assertRaises(InvalidArgument, m.invoke_positional, [1, 2], None)

    def test_unknown_names(self) -> None:
        """Unknown services and methods get Go's error texts."""
        self.assertEqual(str(self.registry.unknown("Nope.X")), "rpc: can't find service Nope.X")
        self.assertEqual(str(self.registry.unknown("Calc.X")), "rpc: can't find method Calc.X")
        self.assertEqual(str(self.registry.unknown("NoDot")),
                         "rpc: service/method request ill-formed: NoDot")

    def test_duplicate_name(self) -> None:
        """A service name can be registered once."""
        self.assertRaises(ValueError, self.registry.add, Calc)

    def test_constructor_options(self) -> None:
        """Options reach the constructor; a bad option names the service."""
        registry = ServiceRegistry()
        e = self.assertRaises(TypeError, registry.add, Calc, {"bogus": 1})
        self.assertIn("service 'Calc'", str(e))


class PerConnectionTests(SynchronousTestCase):
    """Per-connection services get an instance per session."""

    def test_instances_per_session(self) -> None:
        """Each session has its own instance, built with the session and options."""
        registry = ServiceRegistry()
        registry.add(PerConnection, {"start": 10})
        self.assertTrue(registry.has_per_connection())
        one, two = object(), object()
        bound_one = registry.bind_connection(one)["Counter.Next"]
        bound_two = registry.bind_connection(two)["Counter.Next"]
        self.assertEqual([bound_one.invoke(None, None), bound_one.invoke(None, None),
                          bound_two.invoke(None, None)], [11, 12, 11])
        self.assertIs(bound_one.function.__self__.session, one)
        self.assertIsNone(registry.lookup_shared("Counter.Next"))


class AccessTests(SynchronousTestCase):
    """Per-service access policies."""

    def guard(self, **access):  # type: ignore[no-untyped-def]
        registry = ServiceRegistry()
        registry.add(Calc, access=SimpleNamespace(**access))
        return registry.lookup_shared("Calc.Multiply").guard

    def test_require_login(self) -> None:
        """A login-only service refuses a session without a user."""
        guard = self.guard(require_login=True, require_identity=())
        e = self.assertRaises(Unauthenticated, guard, SimpleNamespace(user=None, tls_identity=None))
        self.assertEqual(str(e), "Calc requires a login on this connection")
        guard(SimpleNamespace(user="u", tls_identity=None))

    def test_require_identity(self) -> None:
        """A certificate-only service checks the CN and SANs against its list."""
        guard = self.guard(require_login=False, require_identity=("alice",))
        e = self.assertRaises(Unauthenticated, guard, SimpleNamespace(user=None, tls_identity=None))
        self.assertIn("requires a TLS client certificate for one of: alice", str(e))
        bob = SimpleNamespace(common_name="bob", dns_names=("bob.example",), ip_addresses=())
        e = self.assertRaises(PermissionDenied, guard, SimpleNamespace(user=None, tls_identity=bob))
        self.assertIn("not open to certificate bob, bob.example", str(e))
        alice = SimpleNamespace(common_name="x", dns_names=("alice",), ip_addresses=())
        guard(SimpleNamespace(user=None, tls_identity=alice))

    def test_no_policy(self) -> None:
        """Without a policy there is no guard at all (nothing on the hot path)."""
        self.assertIsNone(self.guard(require_login=False, require_identity=()))
