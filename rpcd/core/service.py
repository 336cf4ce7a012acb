"""
Services: marking methods as callable, and the registry of C{Service.Method}.

A service is a plain class.  Only methods marked with L{exposed} can be
called; their type hints say what arguments they accept and what they return
(see L{rpcd.core.convert}).  A parameter annotated L{CallContext} receives the
call's context (session, peer, deadline, metadata) instead of an argument::

    @dataclass
    class Args:
        A: int
        B: int

    class Arith:
        @exposed
        def Multiply(self, args: Args) -> int:
            "Multiply A by B."
            return args.A * args.B

Each call carries one argument value, as in Go's net/rpc.  A method with one
parameter receives it converted; a method with several receives a mapping as
keyword arguments or a list as positional ones.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import functools
import inspect
import typing
from typing import Any, Callable, Iterable, Sequence

from twisted.internet.defer import Deferred

from rpcd.core.context import CallContext
from rpcd.core.convert import (
    Mismatch,
    argument_converter,
    calling,
    result_converter,
    zero_factory,
)
from rpcd.errors import InvalidArgument, Unimplemented

_EXPOSED = "__rpcd_exposed__"
_SERVICE = "__rpcd_service__"


class Kind(enum.Enum):
    """How a method's messages flow."""

    UNARY = "unary"
    SERVER_STREAM = "server_stream"
    CLIENT_STREAM = "client_stream"
    BIDI_STREAM = "bidi_stream"


def exposed(func: Callable | None = None, *, name: str | None = None,
            kind: Kind | str | None = None) -> Any:
    """
    Mark a method as callable remotely.

    Usable bare (C{@exposed}) or with options (C{@exposed(name="Other")}).

    @param func: the method.
    @param name: the name callers use; the method's own name by default.
    @param kind: a L{Kind} for streaming methods; unary by default, and an
        C{async def} generator is a server stream.
    @return: the method itself, marked.
    """
    def mark(f: Callable) -> Callable:
        setattr(f, _EXPOSED, (name or f.__name__, Kind(kind) if kind else None))
        return f
    if func is not None:
        return mark(func)
    return mark


def service(name: str | None = None, *, per_connection: bool = False) -> Callable[[type], type]:
    """
    Optionally name a service class, or make it per-connection.

    A per-connection service gets a new instance for each connection, built
    as C{cls(session=session, **options)}, as Go's seed does with
    C{rpc.NewServer()} per connection; a shared one is built once as
    C{cls(**options)}.

    @param name: the service name; the class name by default.
    @param per_connection: one instance per connection.
    @return: a class decorator.
    """
    def mark(cls: type) -> type:
        setattr(cls, _SERVICE, (name or cls.__name__, per_connection))
        return cls
    return mark


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of an exposed method (the context parameter excluded)."""

    name: str
    hint: Any
    convert: Callable[[Any], Any]
    has_default: bool


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """
    What rpcd knows about one exposed method, worked out once per class.

    @ivar name: the name callers use (the part after the dot).
    @ivar attribute: the Python attribute to call.
    @ivar params: the parameters that take arguments.
    @ivar context_param: the name of the parameter taking the L{CallContext},
        or None.
    @ivar arg_hint: the hint of the single argument value (the one parameter's
        hint, or C{dict} for several, C{None} for none); codecs that need
        type information (gob) read it.
    @ivar result_hint: the return annotation (C{Any} when absent).
    @ivar convert_result: checks a result and makes it plain data.
    @ivar kind: unary or a kind of stream.
    @ivar signature: a readable signature for listings.
    @ivar doc: the first line of the docstring.
    @ivar stream_param: for client and bidirectional streams, the parameter
        that receives the caller's messages as an async iterator (annotated
        C{AsyncIterator[T]}); None otherwise.
    @ivar convert_message_in: checks one incoming stream message (from C{T}
        above).
    @ivar convert_message_out: checks one outgoing stream message and makes
        it plain data (from the C{T} of a C{AsyncIterator[T]} or
        C{Iterator[T]} return annotation).
    @ivar message_in_hint: the hint of the caller's stream messages (the
        C{T} above), or None; read by L{rpcd.core.schema}.
    @ivar message_out_hint: the hint of the method's stream messages, or
        None; read by L{rpcd.core.schema}.
    """

    name: str
    attribute: str
    params: tuple[Param, ...]
    context_param: str | None
    arg_hint: Any
    result_hint: Any
    convert_result: Callable[[Any], Any]
    kind: Kind
    signature: str
    doc: str
    stream_param: str | None = None
    convert_message_in: Callable[[Any], Any] | None = None
    convert_message_out: Callable[[Any], Any] | None = None
    message_in_hint: Any = None
    message_out_hint: Any = None

    def bind(self, instance: object, guard: Callable[[Any], None] | None = None) -> "BoundMethod":
        """
        Make the per-call invoker for this method on an instance.

        @param instance: a service instance.
        @param guard: checks a session before each call (see
            L{access_guard}), or None.
        @return: a L{BoundMethod}.
        """
        function = getattr(instance, self.attribute)
        return BoundMethod(self, function, _make_invoker(self, function), guard)


@dataclasses.dataclass(frozen=True)
class BoundMethod:
    """
    An exposed method of one service instance, ready to call.

    @ivar spec: the method's L{MethodSpec}.
    @ivar function: the bound Python method.
    @ivar invoke: C{invoke(value, context)} converts the argument value and
        calls the method, returning whatever it returns (a value, a Deferred
        or a coroutine); a mismatch raises L{InvalidArgument}.
    """

    spec: MethodSpec
    function: Callable
    invoke: Callable[[Any, CallContext | None], Any]
    guard: Callable[[Any], None] | None = None

    def invoke_named(self, params: dict, context: CallContext | None) -> Any:
        """
        Call with arguments given by name (JSON-RPC 2.0 C{params} object).

        A single-parameter method whose parameter name is not among the keys
        receives the whole mapping as its argument (so C{{"A": 7, "B": 8}}
        reaches C{Multiply(args: Args)}).

        @param params: the named arguments.
        @param context: the call context.
        @return: what the method returns.
        """
        ps = self.spec.params
        if len(ps) == 1 and ps[0].name not in params:
            return self.invoke(params, context)
        unknown = set(params) - {p.name for p in ps}
        if unknown:
            raise InvalidArgument(f"{self.spec.name}() got unexpected argument(s): "
                                  f"{', '.join(sorted(map(str, unknown)))}")
        return self.invoke(params if len(ps) != 1 else params[ps[0].name], context)

    def invoke_positional(self, params: list, context: CallContext | None) -> Any:
        """
        Call with arguments given by position (JSON-RPC 2.0 C{params} array).

        @param params: the positional arguments.
        @param context: the call context.
        @return: what the method returns.
        """
        ps = self.spec.params
        if len(ps) == 1:
            if len(params) != 1:
                raise InvalidArgument(f"{self.spec.name}() takes 1 argument, got {len(params)}")
            return self.invoke(params[0], context)
        return self.invoke(list(params), context)

    def invoke_stream(self, value: Any, context: CallContext | None, messages: Any) -> Any:
        """
        Call a client- or bidirectional-streaming method.

        @param value: the argument value for the method's other parameters.
        @param context: the call context.
        @param messages: the async iterator of the caller's messages, passed
            as the method's L{MethodSpec.stream_param}.
        @return: what the method returns.
        """
        stream_param = self.spec.stream_param
        assert stream_param is not None  # only stream-taking methods get here
        function = functools.partial(self.function, **{stream_param: messages})
        return _make_invoker(self.spec, function)(value, context)


def _make_invoker(spec: MethodSpec, function: Callable) -> Callable[[Any, CallContext | None], Any]:
    params = spec.params
    ctx_name = spec.context_param
    if len(params) == 1:
        (param,) = params
        convert = param.convert
        pname = param.name
        if ctx_name is None:
            return calling(convert, function, pname)

        def invoke_one(value: Any, context: CallContext | None) -> Any:
            try:
                arg = convert(value)
            except Mismatch as e:
                raise InvalidArgument(e.describe(pname)) from None
            return function(arg, **{ctx_name: context})
        return invoke_one
    if not params:
        def invoke_none(value: Any, context: CallContext | None) -> Any:
            if ctx_name is None:
                return function()
            return function(**{ctx_name: context})
        return invoke_none

    def invoke_many(value: Any, context: CallContext | None) -> Any:
        kwargs = _spread(spec, value)
        if ctx_name is not None:
            kwargs[ctx_name] = context
        return function(**kwargs)
    return invoke_many


def _spread(spec: MethodSpec, value: Any) -> dict[str, Any]:
    params = spec.params
    if isinstance(value, dict):
        items = [(p, value[p.name]) for p in params if p.name in value]
        missing = [p.name for p in params if p.name not in value and not p.has_default]
        extra = set(value) - {p.name for p in params}
        if extra:
            raise InvalidArgument(f"{spec.name}() got unexpected argument(s): "
                                  f"{', '.join(sorted(map(str, extra)))}")
    elif isinstance(value, (list, tuple)):
        if len(value) > len(params):
            raise InvalidArgument(f"{spec.name}() takes {len(params)} arguments, got {len(value)}")
        items = list(zip(params, value))
        missing = [p.name for p in params[len(value):] if not p.has_default]
    else:
        raise InvalidArgument(f"{spec.name}() takes {len(params)} arguments: "
                              f"send an object with {', '.join(p.name for p in params)} or a list")
    if missing:
        raise InvalidArgument(f"{spec.name}() is missing argument(s): {', '.join(missing)}")
    kwargs = {}
    for p, v in items:
        try:
            kwargs[p.name] = p.convert(v)
        except Mismatch as e:
            raise InvalidArgument(e.describe(p.name)) from None
    return kwargs


def method_spec(cls: type, attribute: str, name: str, kind: Kind | None) -> MethodSpec:
    """
    Work out a L{MethodSpec} from a method's signature and type hints.

    @param cls: the service class.
    @param attribute: the method's attribute name.
    @param name: the exposed name.
    @param kind: an explicit kind, or None to infer it.
    @return: the spec.
    @raise TypeError: a hint rpcd cannot check; the message names the method.
    """
    function = getattr(cls, attribute)
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as e:
        raise TypeError(f"{cls.__name__}.{attribute}: cannot resolve type hints: {e}") from e
    sig = inspect.signature(function)
    params: list[Param] = []
    context_param = None
    stream_param = None
    in_item: Any = Any
    for p in list(sig.parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{cls.__name__}.{attribute}: *args and **kwargs cannot be exposed")
        hint = hints.get(p.name, Any)
        if hint is CallContext:
            context_param = p.name
            continue
        is_stream, item = _stream_item(hint, _IN_STREAMS)
        if is_stream and stream_param is None:
            stream_param, in_item = p.name, item
            continue
        try:
            conv = argument_converter(hint)
        except TypeError as e:
            raise TypeError(f"{cls.__name__}.{attribute}({p.name}): {e}") from None
        params.append(Param(p.name, hint, conv, p.default is not p.empty))
    result_hint = _awaited(hints.get("return", Any))
    out_stream, out_item = _stream_item(result_hint, _OUT_STREAMS)
    out_stream = (out_stream or inspect.isasyncgenfunction(function)
                  or inspect.isgeneratorfunction(function))
    if kind is None:
        if stream_param is not None:
            kind = Kind.BIDI_STREAM if out_stream else Kind.CLIENT_STREAM
        else:
            kind = Kind.SERVER_STREAM if out_stream else Kind.UNARY
    if kind in (Kind.CLIENT_STREAM, Kind.BIDI_STREAM) and stream_param is None:
        if not params:
            raise TypeError(f"{cls.__name__}.{attribute}: a {kind.value} method needs a "
                            "parameter for the caller's messages (annotate it AsyncIterator[T])")
        stream_param = params.pop(0).name
    if kind in (Kind.SERVER_STREAM, Kind.BIDI_STREAM):
        if out_item is None:
            out_item = _stream_item(result_hint, _ITERABLES)[1] or Any
        result_hint = type(None)
    try:
        convert_in = argument_converter(in_item) if stream_param is not None else None
        convert_out = result_converter(out_item) if out_item is not None else None
    except TypeError as e:
        raise TypeError(f"{cls.__name__}.{attribute}: stream messages: {e}") from None
    if len(params) == 1:
        arg_hint = params[0].hint
    elif params:
        arg_hint = dict
    else:
        arg_hint = None
    doc = inspect.getdoc(function) or ""
    shown = ", ".join(_param_text(p) for p in params)
    if stream_param is not None:
        shown = ", ".join(filter(None, [f"{stream_param}: {_stream_text(in_item)}", shown]))
    if convert_out is not None:
        signature = f"{name}({shown}) -> {_stream_text(out_item)}"
    else:
        signature = f"{name}({shown})" + (f" -> {_hint_text(result_hint)}" if "return" in hints else "")
    return MethodSpec(
        name=name, attribute=attribute, params=tuple(params), context_param=context_param,
        arg_hint=arg_hint, result_hint=result_hint,
        convert_result=result_converter(result_hint), kind=kind,
        signature=signature, doc=doc.splitlines()[0] if doc else "",
        stream_param=stream_param, convert_message_in=convert_in,
        convert_message_out=convert_out,
        message_in_hint=in_item if stream_param is not None else None,
        message_out_hint=out_item if convert_out is not None else None,
    )


_IN_STREAMS = (collections.abc.AsyncIterator, collections.abc.AsyncIterable)
_OUT_STREAMS = (collections.abc.AsyncIterator, collections.abc.AsyncIterable,
                collections.abc.AsyncGenerator, collections.abc.Iterator,
                collections.abc.Generator)
_ITERABLES = _OUT_STREAMS + (collections.abc.Iterable,)


def _stream_item(hint: Any, origins: tuple[type, ...]) -> tuple[bool, Any]:
    """
    Whether a hint is one of the stream types, and the type of its items.

    @param hint: a resolved type hint.
    @param origins: the abstract collection types that count as streams.
    @return: C{(True, T)} for e.g. C{AsyncIterator[T]} (C{T} is C{Any} when
        the hint has no argument), else C{(False, None)}.
    """
    origin = typing.get_origin(hint) or hint
    if origin in origins:
        args = typing.get_args(hint)
        return True, (args[0] if args else Any)
    return False, None


def _awaited(hint: Any) -> Any:
    """The type a C{Deferred[T]} or C{Awaitable[T]} hint resolves to: C{T}."""
    origin = typing.get_origin(hint)
    if origin is not None and isinstance(origin, type) and (
            issubclass(origin, Deferred) or issubclass(origin, collections.abc.Awaitable)):
        args = typing.get_args(hint)
        return args[-1] if args else Any
    if hint is Deferred:
        return Any
    return hint


def _param_text(p: Param) -> str:
    return f"{p.name}: {_hint_text(p.hint)}" if p.hint is not Any else p.name


def _stream_text(item: Any) -> str:
    # Without a hint for its items, a stream is shown as one, not as a
    # "stream Any" (as an unhinted parameter shows only its name).
    return "stream" if item is Any else f"stream {_hint_text(item)}"


def _hint_text(hint: Any) -> str:
    if hint is type(None) or hint is None:
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    """
    A service class and its exposed methods.

    @ivar name: the service name.
    @ivar cls: the class.
    @ivar per_connection: a new instance per connection.
    @ivar methods: exposed name to L{MethodSpec}.
    """

    name: str
    cls: type
    per_connection: bool
    methods: dict[str, MethodSpec]


def describe_service(cls: type, name: str | None = None,
                     per_connection: bool | None = None) -> ServiceSpec:
    """
    Find the exposed methods of a service class.

    @param cls: the class.
    @param name: overrides the service name.
    @param per_connection: overrides the class's own setting.
    @return: the spec.
    @raise TypeError: the class exposes nothing, or a method's hints cannot be
        checked.
    """
    default_name, default_per_connection = getattr(cls, _SERVICE, (cls.__name__, False))
    methods: dict[str, MethodSpec] = {}
    for attribute in dir(cls):
        member = inspect.getattr_static(cls, attribute, None)
        function = getattr(member, "__func__", member)
        mark = getattr(function, _EXPOSED, None)
        if mark is None:
            continue
        exposed_name, kind = mark
        methods[exposed_name] = method_spec(cls, attribute, exposed_name, kind)
    if not methods:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} exposes no methods "
                        "(mark them with @rpcd.core.service.exposed)")
    return ServiceSpec(
        name=name or default_name, cls=cls,
        per_connection=default_per_connection if per_connection is None else per_connection,
        methods=methods,
    )


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """A method as listed by introspection."""

    name: str
    signature: str
    doc: str
    kind: str


class ServiceRegistry:
    """
    The services a daemon serves, by name.

    Shared services are instantiated here once; per-connection ones are
    instantiated by L{ServiceRegistry.bind_connection} for each session.
    """

    def __init__(self, interceptors: Sequence[Any] = ()) -> None:
        """
        @param interceptors: the server's interceptors, in chain order (see
            L{rpcd.core.interceptors}); read by each connection as it starts.
        """
        self.interceptors: tuple[Any, ...] = tuple(interceptors)
        self._specs: dict[str, ServiceSpec] = {}
        self._options: dict[str, dict[str, Any]] = {}
        self._shared: dict[str, BoundMethod] = {}
        self._guards: dict[str, Callable[[Any], None] | None] = {}
        self.call_counts: dict[str, int] = {}

    def add(self, spec_or_class: ServiceSpec | type | object, options: dict[str, Any] | None = None,
            *, name: str | None = None, access: Any = None) -> ServiceSpec:
        """
        Serve a service.

        @param spec_or_class: a L{ServiceSpec}, a class, or an already built
            instance (shared).
        @param options: keyword arguments for the constructor.
        @param name: overrides the service name.
        @param access: an object with C{require_login} and C{require_identity}
            (a L{rpcd.daemon.config.ServiceConfig}), or None for no checks.
        @return: the spec.
        @raise ValueError: the name is taken.
        @raise TypeError: the constructor rejected the options; the message
            names the service.
        """
        instance = None
        if isinstance(spec_or_class, ServiceSpec):
            spec = spec_or_class
        elif isinstance(spec_or_class, type):
            spec = describe_service(spec_or_class, name)
        else:
            instance = spec_or_class
            spec = describe_service(type(instance), name, per_connection=False)
        if name and spec.name != name:
            spec = dataclasses.replace(spec, name=name)
        if "." in spec.name or not spec.name:
            raise ValueError(f"service name {spec.name!r} must be non-empty and have no '.'")
        if spec.name in self._specs:
            raise ValueError(f"service {spec.name!r} is already registered")
        options = dict(options or {})
        guard = access_guard(spec.name, access)
        self._guards[spec.name] = guard
        if not spec.per_connection:
            if instance is None:
                instance = _construct(spec, options, {})
            for method in spec.methods.values():
                self._shared[f"{spec.name}.{method.name}"] = method.bind(instance, guard)
        self._specs[spec.name] = spec
        self._options[spec.name] = options
        return spec

    def remove(self, service_name: str) -> None:
        """
        Stop serving a service: calls that start later get UNIMPLEMENTED;
        calls running now finish, and connections that bound a
        per-connection instance of it keep that instance.

        @param service_name: a registered service's name.
        @raise KeyError: no such service.
        """
        spec = self._specs.pop(service_name)
        self._options.pop(service_name, None)
        self._guards.pop(service_name, None)
        for method in spec.methods.values():
            self._shared.pop(f"{service_name}.{method.name}", None)

    def has_per_connection(self) -> bool:
        """
        @return: whether any service is per-connection.
        """
        return any(s.per_connection for s in self._specs.values())

    def bind_connection(self, session: object) -> dict[str, BoundMethod]:
        """
        Instantiate the per-connection services for one session.

        @param session: the connection's L{rpcd.core.session.Session}.
        @return: C{Service.Method} to L{BoundMethod} for those services.
        """
        bound: dict[str, BoundMethod] = {}
        for spec in self._specs.values():
            if spec.per_connection:
                instance = _construct(spec, self._options[spec.name], {"session": session})
                guard = self._guards[spec.name]
                for method in spec.methods.values():
                    bound[f"{spec.name}.{method.name}"] = method.bind(instance, guard)
        return bound

    def lookup_shared(self, name: str) -> BoundMethod | None:
        """
        @param name: C{Service.Method}.
        @return: the shared method, or None.
        """
        return self._shared.get(name)

    def unknown(self, name: str) -> Unimplemented:
        """
        The error for a name that resolves to nothing, in Go's words.

        @param name: what the caller asked for.
        @return: an L{Unimplemented} saying whether the service or the method
            is missing (C{rpc: can't find service X} / C{can't find method X}).
        """
        service_name, dot, method = name.rpartition(".")
        if not dot:
            return Unimplemented(f"rpc: service/method request ill-formed: {name}")
        if service_name not in self._specs:
            return Unimplemented(f"rpc: can't find service {name}")
        return Unimplemented(f"rpc: can't find method {name}")

    def spec(self, service_name: str) -> ServiceSpec | None:
        """
        @param service_name: a service name.
        @return: its spec, or None.
        """
        return self._specs.get(service_name)

    def method_spec(self, name: str) -> MethodSpec | None:
        """
        @param name: C{Service.Method}.
        @return: the method's spec, or None.
        """
        service_name, _, method = name.rpartition(".")
        spec = self._specs.get(service_name)
        return spec.methods.get(method) if spec else None

    def services(self) -> Iterable[ServiceSpec]:
        """
        @return: every registered service, in name order.
        """
        return [self._specs[n] for n in sorted(self._specs)]

    def may_call(self, service_name: str, session: Any) -> bool:
        """
        Whether a session passes a service's access policy (its
        C{require_login} and C{require_identity}), so that listings show a
        caller only what it may call.

        @param service_name: a registered service's name.
        @param session: the caller's L{rpcd.core.session.Session}.
        @return: whether C{session} may call the service's methods now.
        """
        guard = self._guards.get(service_name)
        if guard is None:
            return service_name in self._specs
        from rpcd.errors import RPCError
        try:
            guard(session)
        except RPCError:
            return False
        return True

    def services_for(self, session: Any) -> list[ServiceSpec]:
        """
        @param session: the caller's session.
        @return: the services it may call (L{may_call}), in name order.
        """
        return [spec for spec in self.services() if self.may_call(spec.name, session)]

    def listing(self, session: Any = None) -> list[MethodInfo]:
        """
        @param session: list only what this session may call (L{may_call});
            None lists every method.
        @return: the methods, C{Service.Method} with signature and doc line.
        """
        specs = self.services() if session is None else self.services_for(session)
        return [MethodInfo(f"{s.name}.{m.name}", f"{s.name}.{m.signature}", m.doc, m.kind.value)
                for s in specs for m in sorted(s.methods.values(), key=lambda m: m.name)]


def access_guard(service_name: str, access: Any) -> Callable[[Any], None] | None:
    """
    Build the per-call check of a service's access policy.

    @param service_name: for messages.
    @param access: has C{require_login} (bool) and C{require_identity}
        (names a client certificate must carry: its CN or a SAN), or None.
    @return: a function of a session that raises
        L{rpcd.errors.Unauthenticated} or L{rpcd.errors.PermissionDenied},
        or None when there is nothing to check.
    """
    from rpcd.errors import PermissionDenied, Unauthenticated
    require_login = bool(getattr(access, "require_login", False))
    allowed = frozenset(getattr(access, "require_identity", ()) or ())
    if not require_login and not allowed:
        return None

    def guard(session: Any) -> None:
        if require_login and session.user is None:
            raise Unauthenticated(f"{service_name} requires a login on this connection")
        if allowed:
            identity = session.tls_identity
            if identity is None:
                raise Unauthenticated(f"{service_name} requires a TLS client certificate "
                                      f"for one of: {', '.join(sorted(allowed))}")
            names = {identity.common_name, *identity.dns_names, *identity.ip_addresses}
            if not names & allowed:
                shown = ", ".join(sorted(n for n in names if n)) or "no names"
                raise PermissionDenied(f"{service_name} is not open to certificate {shown}; "
                                       f"allowed: {', '.join(sorted(allowed))}")
    return guard


def _construct(spec: ServiceSpec, options: dict[str, Any], extra: dict[str, Any]) -> object:
    try:
        return spec.cls(**extra, **options)
    except TypeError as e:
        raise TypeError(f"service {spec.name!r}: cannot build {spec.cls.__qualname__} "
                        f"with options {sorted(options)}: {e}") from e


__all__ = ["exposed", "service", "Kind", "ServiceRegistry", "describe_service",
           "MethodSpec", "BoundMethod", "ServiceSpec", "MethodInfo", "zero_factory"]
