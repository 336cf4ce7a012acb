"""
An OpenRPC document (L{rpcd.core.schema}) to a typed Python client module: what
C{rpcd stubs ENDPOINT -o FILE} writes.

The module has a dataclass for each component schema, and for each service
two classes wrapping rpcd's clients: C{ArithClient(client)}, whose methods
are C{async def} over an awaited client (L{rpcd.client.Client}, the
balancer), and C{ArithBlockingClient(client)} over
L{rpcd.client.BlockingClient}; C{Services(client)} and
C{BlockingServices(client)} hold one of each per service.  Every parameter
and result is typed, so mypy checks the calls:

    with BlockingClient("tcp:127.0.0.1:1234") as client:
        api = stubs.BlockingServices(client)
        product: int = api.Arith.Multiply(stubs.Args(A=7, B=8))

Server streams are C{async for} iterators; client and bidirectional streams
return a L{rpcd.client.stubsupport.TypedStream}.  Neither is in the blocking
classes (L{rpcd.client.BlockingClient} has no streams).
"""

from __future__ import annotations

import keyword
import re
from typing import Any

_REF = "#/components/schemas/"
_NOT_IDENT = re.compile(r"[^A-Za-z0-9_]")
_SCALARS = {"integer": "int", "number": "float", "boolean": "bool", "null": "None"}
_ZEROS = {"int": "0", "float": "0.0", "str": '""', "bool": "False", "bytes": 'b""'}
_IMPORTED = frozenset({"dataclasses", "Any", "AsyncIterator", "AsyncCaller", "BlockingCaller",
                       "TypedStream", "decode", "encode"})


def identifier(name: str) -> str:
    """
    @param name: a service, method, schema or field name.
    @return: a Python identifier for it (other characters become C{_}, a
        keyword gets a C{_} appended).
    """
    ident = _NOT_IDENT.sub("_", name) or "_"
    if ident[0].isdigit():
        ident = "_" + ident
    if keyword.iskeyword(ident):
        ident += "_"
    return ident


class _Writer:
    """Builds the module's text from one document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        schemas = document.get("components", {}).get("schemas", {})
        self.schemas: dict[str, dict[str, Any]] = schemas
        # The names the module imports are not free for its classes (a
        # protobuf message may well be called Any).
        self.taken = set(_IMPORTED)
        self.classes = {name: _free(identifier(name), self.taken) for name in schemas}
        self.lines: list[str] = []

    def annotation(self, schema: Any) -> str:
        """
        @param schema: a JSON Schema from rpcd.
        @return: the Python annotation for it.
        """
        if not isinstance(schema, dict) or not schema:
            return "Any"
        ref = schema.get("$ref")
        if isinstance(ref, str):
            name = ref[len(_REF):] if ref.startswith(_REF) else None
            return self.classes.get(name, "Any") if name is not None else "Any"
        if "anyOf" in schema:
            members = list(dict.fromkeys(self.annotation(m) for m in schema["anyOf"]))
            return "Any" if "Any" in members else " | ".join(members)
        kind = schema.get("type")
        if kind == "string":
            return "bytes" if schema.get("x-rpcd-type") == "bytes" else "str"
        if kind in _SCALARS:
            return _SCALARS[kind]
        if kind == "array":
            items = schema.get("items")
            if isinstance(items, list):
                return f"tuple[{', '.join(self.annotation(i) for i in items)}]" if items else "tuple[()]"
            return f"list[{self.annotation(items)}]"
        if kind == "object":
            if "properties" in schema:
                return "dict[str, Any]"
            key = self.annotation(schema["x-rpcd-key"]) if "x-rpcd-key" in schema else "str"
            return f"dict[{key}, {self.annotation(schema.get('additionalProperties'))}]"
        return "Any"

    def write(self) -> str:
        info = self.document.get("info", {})
        title = f"{info.get('title', 'rpcd')} {info.get('version', '')}".strip()
        self.lines += [
            '"""',
            f"Typed client of {_text(title)}, written by C{{rpcd stubs}} from its OpenRPC",
            "document: regenerate it rather than editing it.",
            "",
            "    from rpcd.client import BlockingClient",
            "    with BlockingClient(ENDPOINT) as client:",
            "        api = BlockingServices(client)",
            "",
            "or, in a coroutine run by Twisted, C{api = Services(await connect(ENDPOINT))}.",
            '"""',
            "",
            "from __future__ import annotations",
            "",
            "import dataclasses",
            "from typing import Any, AsyncIterator",
            "",
            "from rpcd.client.stubsupport import AsyncCaller, BlockingCaller, TypedStream, decode, encode",
            "",
        ]
        for name, schema in self.schemas.items():
            self._dataclass(self.classes[name], schema)
        services: dict[str, list[dict[str, Any]]] = {}
        for method in self.document.get("methods", []):
            service, _, _ = method["name"].rpartition(".")
            services.setdefault(service, []).append(method)
        taken = self.taken
        names = {}
        for service in services:
            base = identifier(service)
            names[service] = _free(f"{base}Client", taken), _free(f"{base}BlockingClient", taken)
        for service, methods in services.items():
            self._service(names[service][0], methods, blocking=False)
            self._service(names[service][1], methods, blocking=True)
        for holder, caller, index in (("Services", "AsyncCaller", 0),
                                      ("BlockingServices", "BlockingCaller", 1)):
            self._holder(_free(holder, taken), caller, services, names, index)
        return "\n".join(self.lines).rstrip() + "\n"

    def _dataclass(self, name: str, schema: dict[str, Any]) -> None:
        properties = schema.get("properties")
        fields = list(properties.items()) if isinstance(properties, dict) else []
        if schema.get("type") != "object" or not isinstance(properties, dict) or any(
                identifier(p) != p for p, _ in fields):
            self.lines += ["", f"{name} = dict[str, Any]", ""]  # no field names Python can take
            return
        required = set(schema.get("required", ()))
        rendered: list[tuple[str, str, str | None]] = []
        for prop, sub in fields:
            kind = self.annotation(sub)
            if prop in required:
                rendered.append((prop, kind, None))
            else:
                default, kind = self._default(sub, kind)
                rendered.append((prop, kind, default))
        seen_default = False
        kw_only = False
        for _, _, given in rendered:
            if given is not None:
                seen_default = True
            elif seen_default:
                kw_only = True
        self.lines += ["", "@dataclasses.dataclass" + ("(kw_only=True)" if kw_only else ""),
                       f"class {name}:"]
        self.lines += _docstring(schema.get("description") or schema.get("title") or name, "    ")
        for prop, kind, value in rendered:
            self.lines.append(f"    {prop}: {kind}" + (f" = {value}" if value is not None else ""))
        self.lines.append("")

    def _default(self, schema: dict[str, Any], kind: str) -> tuple[str, str]:
        if "default" in schema and isinstance(schema["default"], (bool, int, float, str)):
            return repr(schema["default"]), kind
        if kind in _ZEROS:
            return _ZEROS[kind], kind
        if kind.startswith("list["):
            return "dataclasses.field(default_factory=list)", kind
        if kind.startswith("dict["):
            return "dataclasses.field(default_factory=dict)", kind
        if kind == "Any" or kind.endswith("| None") or kind == "None":
            return "None", kind
        return "None", f"{kind} | None"

    def _service(self, name: str, methods: list[dict[str, Any]], blocking: bool) -> None:
        service = methods[0]["name"].rpartition(".")[0]
        how = "blocking calls" if blocking else "awaited calls"
        caller = "BlockingCaller" if blocking else "AsyncCaller"
        self.lines += ["", f"class {name}:"]
        self.lines += _docstring(f"The methods of {service}, as {how}.", "    ")
        self.lines += ["", f"    def __init__(self, client: {caller}) -> None:",
                       "        self._client = client", ""]
        for method in methods:
            kind = method.get("x-rpcd-kind", "unary")
            if blocking and kind != "unary":
                continue
            self._method(method, kind, blocking)

    def _method(self, method: dict[str, Any], kind: str, blocking: bool) -> None:
        full = method["name"]
        attribute = identifier(full.rpartition(".")[2])
        params = method.get("params", [])
        signature = ["self"]
        names = []
        for p in params:
            pname = identifier(p["name"])
            if pname in ("self", "timeout"):  # taken by the method itself
                pname += "_"
            names.append((p["name"], pname, p.get("required", True)))
            kind_text = self.annotation(p.get("schema"))
            if p.get("required", True):
                signature.append(f"{pname}: {kind_text}")
            else:
                default = p.get("schema", {}).get("default")
                if isinstance(default, (bool, int, float, str)):
                    signature.append(f"{pname}: {kind_text} = {default!r}")
                else:
                    signature.append(f"{pname}: {kind_text} | None = None")
        signature.append("*")
        signature.append("timeout: float | None = None")
        result = self.annotation(method.get("result", {}).get("schema"))
        if len(params) == 1:
            argument = f"encode({names[0][1]})"
        elif params:
            argument = "{" + ", ".join(f"{original!r}: encode({pname})" for original, pname, _ in names) + "}"
        else:
            argument = "None"
        doc = method.get("summary") or full
        if kind == "unary":
            returns = result
            head = "def" if blocking else "async def"
            call = f"self._client.call({full!r}, {argument}, timeout=timeout)"
            self.lines.append(f"    {head} {attribute}({', '.join(signature)}) -> {returns}:")
            self.lines += _docstring(doc, "        ")
            self.lines.append(f"        result: {result} = decode({self._runtime(result)}, "
                              f"{call if blocking else 'await ' + call})")
            self.lines += ["        return result", ""]
        elif kind == "server_stream":
            self.lines.append(f"    async def {attribute}({', '.join(signature)}) -> AsyncIterator[{result}]:")
            self.lines += _docstring(doc, "        ")
            self.lines += [
                f"        async for message in self._client.stream({full!r}, {argument}, timeout=timeout):",
                f"            item: {result} = decode({self._runtime(result)}, message)",
                "            yield item", ""]
        else:
            send = self.annotation(method.get("x-rpcd-send"))
            returns = f"TypedStream[{send}, {result}]"
            argument = "None" if not params else argument
            self.lines.append(f"    def {attribute}({', '.join(signature)}) -> {returns}:")
            self.lines += _docstring(doc, "        ")
            self.lines += [
                f"        stream = self._client.stream({full!r}, {argument}, timeout=timeout)",
                f"        typed: {returns} = TypedStream(stream, {self._runtime(result)})",
                "        return typed", ""]

    def _runtime(self, annotation: str) -> str:
        """An annotation as an expression that evaluates to the type at run time."""
        return "type(None)" if annotation == "None" else annotation

    def _holder(self, name: str, caller: str, services: dict[str, Any],
                names: dict[str, tuple[str, str]], index: int) -> None:
        self.lines += ["", f"class {name}:"]
        self.lines += _docstring("Every service, by name: C{api.Service.Method(...)}.", "    ")
        self.lines += ["", f"    def __init__(self, client: {caller}) -> None:"]
        for service in services:
            self.lines.append(f"        self.{identifier(service)} = {names[service][index]}(client)")
        if not services:
            self.lines.append("        self._client = client")
        self.lines.append("")


def _free(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}{n}"
    taken.add(candidate)
    return candidate


def _text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', "'''")


def _docstring(text: str, indent: str) -> list[str]:
    lines = _text(text).strip().splitlines() or [""]
    if len(lines) == 1:
        return [f'{indent}"""{lines[0]}"""']
    return [f'{indent}"""', *(f"{indent}{line}".rstrip() for line in lines), f'{indent}"""']


def python_module(document: dict[str, Any]) -> str:
    """
    The typed client module for an OpenRPC document from rpcd.

    @param document: the document (C{rpc.discover}'s answer).
    @return: the module's source text.
    """
    return _Writer(document).write()
