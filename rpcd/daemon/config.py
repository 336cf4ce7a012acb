"""
The daemon's configuration: a TOML file turned into frozen dataclasses.

Every key is checked: an unknown key or a bad value raises L{ConfigError}
naming the file and the key, so a daemon never starts half-configured.  No
reactor here; C{rpcd.daemon.tap} turns a L{Config} into running services.  The
reference for every key is C{docs/config.md}; C{etc/rpcd.toml} is the
commented example, and the same text is embedded as the default.
"""

from __future__ import annotations

import dataclasses
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from rpcd.server.httpconfig import HTTPConfig
from rpcd.server.limits import Limits
from rpcd.wire import sniff

DEFAULT_NAME = "<embedded default config>"

#: The listen queue length of an endpoint that sets none (Twisted's own
#: default, 50, drops connections in a connect flood; the kernel caps it at
#: net.core.somaxconn).
DEFAULT_BACKLOG = 1024


class ConfigError(ValueError):
    """The config file is wrong; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class ListenConfig:
    """
    One listening endpoint.

    @ivar endpoint: a Twisted server endpoint string.
    @ivar protocols: the wire protocols served there.
    @ivar backlog: its listen queue length, or None for C{server.backlog}.
    """

    endpoint: str
    protocols: frozenset[str] = sniff.ALL
    backlog: int | None = None


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """
    One service to serve.

    @ivar name: the name callers use.
    @ivar class_path: C{module:Class}, or None to find a plugin by C{name}.
    @ivar options: keyword arguments for the service's constructor.
    @ivar require_login: calls need a logged-in connection.
    @ivar require_identity: calls need a client certificate whose identity
        (CN or a SAN) is in this list (empty: no such need).
    @ivar process_shared: with workers, run it in one process that the
        workers call (L{rpcd.daemon.owner}); None: as its class says.
    """

    name: str
    class_path: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    require_login: bool = False
    require_identity: tuple[str, ...] = ()
    process_shared: bool | None = None


@dataclasses.dataclass(frozen=True)
class InterceptorConfig:
    """
    One interceptor of the server's chain (see L{rpcd.core.interceptors}).

    @ivar use: a built-in's name (C{access_log}, C{rate_limit},
        C{tracing}, ...) or C{package.module:factory}.
    @ivar options: keyword arguments for the factory.
    """

    use: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ConnectConfig:
    """
    A reverse connection: the daemon dials out and serves over it.

    @ivar endpoint: a Twisted client endpoint string.
    @ivar connections: how many such connections to keep up.
    @ivar protocol: the wire protocol spoken over it, or None to tell it
        from the caller's first bytes as a listener does (native, gob or
        json).
    """

    endpoint: str
    connections: int = 1
    protocol: str | None = None


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    """
    Users and login throttling.

    @ivar users: user name to salted password hash (C{rpcd hash-password}).
    @ivar max_failed_logins: failed logins per peer host per window.
    @ivar failed_login_window: the window, in seconds.
    @ivar max_failed_logins_per_user: failed logins against one user from
        one peer host per window.
    @ivar login_threads: threads that run the password KDF.
    @ivar login_queue: password checks that may wait for those threads;
        more logins are refused with RESOURCE_EXHAUSTED.
    """

    users: Mapping[str, str] = dataclasses.field(default_factory=dict)
    max_failed_logins: int = 5
    failed_login_window: float = 60.0
    max_failed_logins_per_user: int = 5
    login_threads: int = 2
    login_queue: int = 64


@dataclasses.dataclass(frozen=True)
class DiscoveryConfig:
    """
    Registering the daemon's services in etcd (L{rpcd.cluster.discovery}).

    @ivar etcd: the URL of etcd's client endpoint (its v3 JSON gateway).
    @ivar prefix: the registry's key prefix.
    @ivar advertise: the client endpoint string others dial; C{{port}} in
        it stands for the first listener's port.
    @ivar ttl: the lease's seconds.
    """

    etcd: str
    advertise: str
    prefix: str = "/rpcd/services/"
    ttl: int = 10


@dataclasses.dataclass(frozen=True)
class Config:
    """
    A whole daemon configuration.

    @ivar source: the file it came from (for messages).
    @ivar backlog: the listen queue length of endpoints that set no
        C{backlog=} themselves.
    @ivar log_level: the least severe log level written (C{server.log_level}).
    @ivar pythonpath: absolute directories put on C{sys.path} before the
        services' C{module:Class} are imported (C{server.pythonpath}).
    @ivar workers: processes serving the listeners (C{server.workers};
        C{auto} is resolved to the cores available); 1 runs no supervisor.
    """

    source: str
    listen: tuple[ListenConfig, ...]
    connect: tuple[ConnectConfig, ...]
    limits: Limits
    auth: AuthConfig
    services: tuple[ServiceConfig, ...]
    discovery: DiscoveryConfig | None = None
    http: HTTPConfig = HTTPConfig()
    backlog: int = DEFAULT_BACKLOG
    interceptors: tuple[InterceptorConfig, ...] = ()
    log_level: str = "info"
    shutdown_grace: float = 30.0
    pythonpath: tuple[str, ...] = ()
    workers: int = 1


def default_text() -> str:
    """
    @return: the embedded default config (the same text as
        C{etc/rpcd.toml}).
    """
    return resources.files("rpcd").joinpath("default.toml").read_text("utf-8")


def load(path: str | Path | None = None) -> Config:
    """
    Read and check a config file.

    @param path: the file, or None for the embedded default.
    @return: the config.
    @raise ConfigError: the file is missing, not TOML, or has an unknown key
        or bad value.
    """
    if path is None:
        return parse(default_text(), DEFAULT_NAME)
    try:
        text = Path(path).read_text("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e}") from None
    return parse(text, str(path))


def parse(text: str, source: str) -> Config:
    """
    Check a config's text.

    @param text: TOML.
    @param source: its file name, for messages.
    @return: the config.
    @raise ConfigError: naming the file and the key at fault.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return check(data, source)


def check(data: Mapping[str, Any], source: str, base: str | Path | None = None) -> Config:
    """
    Check a config already read into tables (TOML's, or C{rpcd.serve}'s
    keywords).

    @param data: the top-level table.
    @param source: where it came from, for messages.
    @param base: the directory relative C{server.pythonpath} entries start
        from; None for the directory of C{source} when it is a file, else
        the working directory.
    @return: the config.
    @raise ConfigError: naming the source and the key at fault.
    """
    reader = _Reader(source)
    reader.known(data, "", {"server", "limits", "auth", "http", "services", "discovery",
                            "interceptors"})
    server = reader.table(data, "server")
    reader.known(server, "server", {"listen", "connect", "backlog", "log_level", "shutdown_grace",
                                    "pythonpath", "workers"})
    listen = tuple(_listen(reader, item, i) for i, item in
                   enumerate(reader.list(server, "server", "listen", [])))
    connect = tuple(_connect(reader, item, i) for i, item in
                    enumerate(reader.list(server, "server", "connect", [])))
    return Config(
        source=source, listen=listen, connect=connect,
        backlog=_backlog(reader, server, "server") or DEFAULT_BACKLOG,
        limits=_limits(reader, reader.table(data, "limits")),
        auth=_auth(reader, reader.table(data, "auth")),
        http=_http(reader, reader.table(data, "http")),
        services=_services(reader, reader.table(data, "services")),
        discovery=_discovery(reader, data["discovery"]) if "discovery" in data else None,
        interceptors=tuple(_interceptor(reader, item, i) for i, item in
                           enumerate(reader.list(data, "", "interceptors", []))),
        log_level=_log_level(reader, server),
        shutdown_grace=_shutdown_grace(reader, server),
        pythonpath=_pythonpath(reader, server, base),
        workers=_workers(reader, server),
    )


def _pythonpath(reader: _Reader, server: Mapping[str, Any], base: str | Path | None) -> tuple[str, ...]:
    """
    C{server.pythonpath}: directories importable for C{module:Class}, each
    relative to the config file's directory unless absolute.
    """
    entries = reader.list(server, "server", "pythonpath", [])
    if base is None:
        source = Path(reader.source)
        base = source.parent if source.is_file() else Path.cwd()
    paths = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise reader.fail(f"server.pythonpath[{i}]", f"must be a directory name, not {_kind(entry)}")
        if not entry:
            raise reader.fail(f"server.pythonpath[{i}]", "must not be empty")
        path = (Path(base) / Path(entry).expanduser()).resolve()
        if not path.is_dir():
            raise reader.fail(f"server.pythonpath[{i}]", f"{str(path)!r} is not a directory")
        paths.append(str(path))
    return tuple(paths)


#: The values of C{server.log_level}, least to most severe.
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def _log_level(reader: _Reader, server: Mapping[str, Any]) -> str:
    level = reader.value(server, "server", "log_level", str, "info")
    if level not in LOG_LEVELS:
        raise reader.fail("server.log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return level


def _shutdown_grace(reader: _Reader, server: Mapping[str, Any]) -> float:
    """
    C{server.shutdown_grace}: seconds a draining daemon waits for running
    calls and streams before it cancels them (L{rpcd.daemon.drain}).
    """
    grace = reader.value(server, "server", "shutdown_grace", (int, float), Config.shutdown_grace)
    if not 0 <= grace <= 86400:
        raise reader.fail("server.shutdown_grace", f"must be between 0 and 86400 seconds, got {grace}")
    return float(grace)


#: The most worker processes C{server.workers} may ask for.
MAX_WORKERS = 256


def _workers(reader: _Reader, server: Mapping[str, Any]) -> int:
    """
    C{server.workers}: a number of processes, or C{"auto"} for the cores
    this process may run on (L{os.sched_getaffinity}).
    """
    value = reader.value(server, "server", "workers", (int, str), 1)
    if value == "auto":
        return available_cores()
    if isinstance(value, str) or not 1 <= value <= MAX_WORKERS:
        raise reader.fail("server.workers", f"must be a number from 1 to {MAX_WORKERS} "
                                            f"or \"auto\", got {value!r}")
    return value


def available_cores() -> int:
    """
    @return: how many cores this process may run on.
    """
    import os
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return max(1, len(affinity(0)))
    return max(1, os.cpu_count() or 1)


class _Reader:
    """Typed access to parsed TOML with messages naming file and key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {why}")

    def known(self, table: Mapping[str, Any], where: str, keys: set[str]) -> None:
        for key in table:
            if key not in keys:
                place = f"[{where}] " if where else ""
                raise ConfigError(f"{self.source}: {place}unknown key {key!r} "
                                  f"(known keys: {', '.join(sorted(keys))})")

    def table(self, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, not {_kind(value)}")
        return value

    def list(self, table: Mapping[str, Any], where: str, key: str, default: list) -> list:
        value = table.get(key, default)
        if not isinstance(value, list):
            raise self.fail(f"{where}.{key}" if where else key, f"must be a list, not {_kind(value)}")
        return value

    def value(self, table: Mapping[str, Any], where: str, key: str, kind: type | tuple,
              default: Any) -> Any:
        value = table.get(key, default)
        if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(f"{where}.{key}", f"must be {_names(kind)}, not a boolean")
        if not isinstance(value, kind):
            raise self.fail(f"{where}.{key}", f"must be {_names(kind)}, not {_kind(value)}")
        return value


def _kind(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _names(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_kind(k()) if k is not str else "a string" for k in kinds)


def _protocols(reader: _Reader, where: str, value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise reader.fail(where, f"must be a non-empty list of protocol names from {sorted(sniff.ALL)}")
    unknown = set(value) - sniff.ALL
    if unknown:
        raise reader.fail(where, f"unknown protocol(s) {sorted(unknown)}; choose from {sorted(sniff.ALL)}")
    return frozenset(value)


def _listen(reader: _Reader, item: Any, index: int) -> ListenConfig:
    where = f"server.listen[{index}]"
    if isinstance(item, str):
        return ListenConfig(_endpoint(reader, where, item))
    if isinstance(item, dict):
        reader.known(item, where, {"endpoint", "protocols", "backlog"})
        endpoint = _endpoint(reader, f"{where}.endpoint", reader.value(item, where, "endpoint", str, None))
        protocols = _protocols(reader, f"{where}.protocols", item.get("protocols", sorted(sniff.ALL)))
        return ListenConfig(endpoint, protocols, _backlog(reader, item, where))
    raise reader.fail(where, "must be an endpoint string or a table "
                             "{endpoint = ..., protocols = [...], backlog = N}")


def _backlog(reader: _Reader, table: Mapping[str, Any], where: str) -> int | None:
    if "backlog" not in table:
        return None
    value = reader.value(table, where, "backlog", int, None)
    if not 1 <= value <= 65535:
        raise reader.fail(f"{where}.backlog", f"must be from 1 to 65535, not {value}")
    return value


def _endpoint(reader: _Reader, where: str, value: Any) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise reader.fail(where, f"must be a Twisted endpoint string like "
                                 f"'tcp:1234:interface=127.0.0.1', got {value!r}")
    return value


def _connect(reader: _Reader, item: Any, index: int) -> ConnectConfig:
    where = f"server.connect[{index}]"
    if isinstance(item, str):
        return ConnectConfig(_endpoint(reader, where, item))
    if isinstance(item, dict):
        reader.known(item, where, {"endpoint", "connections", "protocol"})
        endpoint = _endpoint(reader, f"{where}.endpoint", item.get("endpoint"))
        connections = reader.value(item, where, "connections", int, 1)
        if not 1 <= connections <= 1000:
            raise reader.fail(f"{where}.connections", "must be between 1 and 1000")
        protocol = reader.value(item, where, "protocol", (str, type(None)), None)
        if protocol is not None and protocol not in sniff.ALL - {sniff.HTTP, sniff.GRPC}:
            raise reader.fail(f"{where}.protocol", f"must be one of native, gob, json, not {protocol!r}")
        return ConnectConfig(endpoint, connections, protocol)
    raise reader.fail(where, "must be an endpoint string or a table {endpoint = ..., connections = N}")


_LIMIT_KINDS = {f.name: f.type for f in dataclasses.fields(Limits)}


def _limits(reader: _Reader, table: Mapping[str, Any]) -> Limits:
    reader.known(table, "limits", set(_LIMIT_KINDS))
    values: dict[str, Any] = {}
    for name, default in ((f.name, f.default) for f in dataclasses.fields(Limits)):
        kind: Any = (int, float) if isinstance(default, float) else int
        value = reader.value(table, "limits", name, kind, default)
        if value < 0 or (value == 0 and name in ("max_frame_bytes", "max_calls_per_connection",
                                                  "max_connections", "max_connections_per_peer",
                                                  "write_buffer_bytes")):
            raise reader.fail(f"limits.{name}", f"must be positive, got {value}")
        values[name] = float(value) if isinstance(default, float) else value
    if values["max_frame_bytes"] > 1 << 31:
        raise reader.fail("limits.max_frame_bytes", "must be at most 2 GiB")
    return Limits(**values)


def _auth(reader: _Reader, table: Mapping[str, Any]) -> AuthConfig:
    reader.known(table, "auth", {"users", "max_failed_logins", "failed_login_window",
                                 "max_failed_logins_per_user", "login_threads", "login_queue"})
    from rpcd.daemon.auth import PasswordHash
    users = reader.table(table, "users")
    for user, stored in users.items():
        if not isinstance(stored, str):
            raise reader.fail(f"auth.users.{user}", "must be a password hash made by "
                                                    "'rpcd hash-password'")
        try:
            PasswordHash.parse(stored)
        except ValueError as e:
            raise reader.fail(f"auth.users.{user}", f"{e} (make one with 'rpcd hash-password')") from None
    attempts = reader.value(table, "auth", "max_failed_logins", int, 5)
    window = reader.value(table, "auth", "failed_login_window", (int, float), 60.0)
    if attempts < 1 or window <= 0:
        raise reader.fail("auth", "max_failed_logins and failed_login_window must be positive")
    per_user = reader.value(table, "auth", "max_failed_logins_per_user", int, attempts)
    if per_user < 1:
        raise reader.fail("auth.max_failed_logins_per_user", f"must be positive, got {per_user}")
    threads = reader.value(table, "auth", "login_threads", int, 2)
    if not 1 <= threads <= 256:
        raise reader.fail("auth.login_threads", f"must be between 1 and 256, got {threads}")
    queue = reader.value(table, "auth", "login_queue", int, 64)
    if not 0 <= queue <= 100_000:
        raise reader.fail("auth.login_queue", f"must be between 0 and 100000, got {queue}")
    return AuthConfig(dict(users), attempts, float(window), per_user, threads, queue)


def _http(reader: _Reader, table: Mapping[str, Any]) -> HTTPConfig:
    from rpcd.wire.httporigin import check_host_pattern, check_origin_pattern
    reader.known(table, "http", {"allowed_hosts", "allowed_origins", "debug_page", "max_pipelined",
                                  "metrics"})
    checked: dict[str, tuple[str, ...]] = {}
    for key, check in (("allowed_hosts", check_host_pattern),
                       ("allowed_origins", check_origin_pattern)):
        items = reader.list(table, "http", key, [])
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise reader.fail(f"http.{key}[{i}]", f"must be a string, not {_kind(item)}")
            try:
                check(item)
            except ValueError as e:
                raise reader.fail(f"http.{key}[{i}]", str(e)) from None
        checked[key] = tuple(item.lower() for item in items)
    depth = reader.value(table, "http", "max_pipelined", int, HTTPConfig.max_pipelined)
    if not 1 <= depth <= 10000:
        raise reader.fail("http.max_pipelined", f"must be between 1 and 10000, got {depth}")
    return HTTPConfig(
        allowed_hosts=checked["allowed_hosts"], allowed_origins=checked["allowed_origins"],
        debug_page=reader.value(table, "http", "debug_page", bool, True), max_pipelined=depth,
        metrics=reader.value(table, "http", "metrics", bool, False),
    )


def _discovery(reader: _Reader, value: Any) -> DiscoveryConfig:
    if not isinstance(value, dict):
        raise reader.fail("discovery", f"must be a table, not {_kind(value)}")
    reader.known(value, "discovery", {"etcd", "prefix", "advertise", "ttl"})
    for key in ("etcd", "advertise"):
        if key not in value:
            raise reader.fail(f"discovery.{key}", "is required")
    etcd = reader.value(value, "discovery", "etcd", str, None)
    if not etcd.startswith(("http://", "https://")) or not etcd.split("://", 1)[1]:
        raise reader.fail("discovery.etcd", f"must be etcd's client URL like "
                                            f"'http://127.0.0.1:2379', got {etcd!r}")
    advertise = _endpoint(reader, "discovery.advertise", reader.value(value, "discovery", "advertise", str, None))
    rest = advertise.replace("{port}", "")
    if "{" in rest or "}" in rest:
        raise reader.fail("discovery.advertise", f"the only placeholder is {{port}}, got {advertise!r}")
    prefix = reader.value(value, "discovery", "prefix", str, "/rpcd/services/")
    if not prefix:
        raise reader.fail("discovery.prefix", "must not be empty")
    ttl = reader.value(value, "discovery", "ttl", int, 10)
    if not 2 <= ttl <= 3600:
        raise reader.fail("discovery.ttl", f"must be between 2 and 3600 seconds, got {ttl}")
    return DiscoveryConfig(etcd=etcd, advertise=advertise, prefix=prefix, ttl=ttl)


def _interceptor(reader: _Reader, item: Any, index: int) -> InterceptorConfig:
    where = f"interceptors[{index}]"
    if not isinstance(item, dict):
        raise reader.fail(where, f"must be a table, not {_kind(item)}")
    reader.known(item, where, {"use", "options"})
    if "use" not in item:
        raise reader.fail(f"{where}.use", "is required: a built-in's name "
                          "(access_log, rate_limit, tracing) or 'package.module:factory'")
    use = reader.value(item, where, "use", str, None)
    if not use or (":" not in use and not use.replace("_", "").isalnum()):
        raise reader.fail(f"{where}.use", f"must be a built-in's name or "
                          f"'package.module:factory', got {use!r}")
    options = item.get("options", {})
    if not isinstance(options, dict):
        raise reader.fail(f"{where}.options", f"must be a table, not {_kind(options)}")
    return InterceptorConfig(use=use, options=dict(options))


def _services(reader: _Reader, table: Mapping[str, Any]) -> tuple[ServiceConfig, ...]:
    services = []
    for name, entry in table.items():
        where = f"services.{name}"
        if "." in name:
            raise reader.fail(where, "a service name cannot contain '.'")
        if not isinstance(entry, dict):
            raise reader.fail(where, f"must be a table, not {_kind(entry)}")
        reader.known(entry, where, {"class", "enabled", "options", "require_login", "require_identity",
                                    "process_shared"})
        if not reader.value(entry, where, "enabled", bool, True):
            continue
        class_path = reader.value(entry, where, "class", (str, type(None)), None)
        if class_path is not None and ":" not in class_path:
            raise reader.fail(f"{where}.class", f"must be 'package.module:Class', got {class_path!r}")
        identities = reader.list(entry, where, "require_identity", [])
        if not all(isinstance(i, str) for i in identities):
            raise reader.fail(f"{where}.require_identity", "must be a list of strings")
        services.append(ServiceConfig(
            name=name, class_path=class_path,
            options=dict(reader.table(entry, "options") if "options" in entry else {}),
            require_login=reader.value(entry, where, "require_login", bool, False),
            require_identity=tuple(identities),
            process_shared=reader.value(entry, where, "process_shared", (bool, type(None)), None),
        ))
    return tuple(services)


def with_listen(config: Config, endpoints: list[str]) -> Config:
    """
    Replace a config's listening endpoints (the C{--listen} option).

    @param config: the config.
    @param endpoints: server endpoint strings.
    @return: the new config.
    @raise ConfigError: an endpoint string is malformed.
    """
    reader = _Reader("--listen")
    listen = tuple(ListenConfig(_endpoint(reader, f"[{i}]", e)) for i, e in enumerate(endpoints))
    return dataclasses.replace(config, listen=listen)
