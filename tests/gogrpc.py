"""
Building Go gRPC programs (seed 003's server and client) and the
certificates seed 003 expects, for end-to-end tests.

Debian's Go packages make this work without a module proxy: C{protoc} with
C{protoc-gen-go} and C{protoc-gen-go-grpc} generate the Go code, and
C{go build} runs in GOPATH mode (C{GO111MODULE=off}) with C{GOPATH} = a
temporary directory followed by C{/usr/share/gocode}, where
C{golang-google-grpc-dev}, C{golang-google-protobuf-dev} and
C{golang-github-golang-protobuf-1-5-dev} put their sources (the last one
named explicitly: without it apt picks protobuf 1.3, and the server panics
on its first call).

    server = await grpc_go_program(self, "seeds/003_server", SEED_003)
    pki = Seed003Certs(Path(temp_dir(self)))
    ... run server with cwd=pki.server_dir(), the client with cwd=pki.client_dir()
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from rpcd import certs
from tests.cache import cached_build, tool_stamp
from tests.daemon import ROOT, _Output, environment, run, shared_program
from tests.tools import require_directory, require_tool

GO_SOURCES = ROOT / "tests" / "go"
GOCODE = Path("/usr/share/gocode")
APT_PACKAGES = ("golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc "
                "golang-google-grpc-dev golang-google-protobuf-dev "
                "golang-github-golang-protobuf-1-5-dev")


@dataclass(frozen=True)
class GoProto:
    """
    A C{.proto} file and the Go import path of the package generated from it.

    @ivar path: the C{.proto} file.
    @ivar go_package: the import path (given to protoc with an C{M} option, so
        the file needs no C{go_package}).
    """

    path: Path
    go_package: str


#: Seed 003's reconstructed service, as the seed's Go programs import it: the
#: same file rpcd's example serves (its C{go_package} is overridden by the M
#: option).
SEED_003 = GoProto(Path(__file__).resolve().parent.parent / "rpcd" / "examples" / "protos" / "hello_world.proto",
                   "seed003/helloworld")

_gopath: str | None = None
_built: dict[tuple[str, GoProto], str] = {}


def _require_go_packages() -> None:
    """
    Skip (or fail, under C{RPCD_REQUIRE_TOOLS=1}) when Debian's Go gRPC
    sources are missing.
    """
    for package, needed in (("golang-google-grpc-dev", "google.golang.org/grpc"),
                            ("golang-google-protobuf-dev", "google.golang.org/protobuf"),
                            ("golang-github-golang-protobuf-1-5-dev",
                             "github.com/golang/protobuf/proto")):
        require_directory(GOCODE / "src" / needed, package,
                          f"to build the Go gRPC programs; all of: {APT_PACKAGES}")


def go_grpc_environment(gopath: str) -> dict[str, str]:
    """
    @param gopath: the work directory to put first on C{GOPATH}.
    @return: the environment for C{go build} in GOPATH mode against Debian's
        Go sources.
    """
    return {
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{GOCODE}",
        "GOFLAGS": "",
        "GOCACHE": os.environ.get("GOCACHE") or str(Path(tempfile.gettempdir()) / "rpcd-tests-gocache"),
    }


async def grpc_go_program(test: TestCase, name: str, proto: GoProto) -> str:
    """
    Build C{tests/go/NAME/main.go}, a gRPC program importing the Go package
    generated from C{proto} (once for all runs: L{tests.cache}).

    @param test: the calling test (skipped when a tool is missing).
    @param name: the program's directory under C{tests/go}.
    @param proto: the service's C{.proto} and its Go import path.
    @return: the executable's path.
    """
    go = require_tool("go", "to build the Go gRPC programs")
    protoc = require_tool("protoc", "to generate the Go gRPC code")
    plugins = [require_tool("protoc-gen-go", "to generate the Go protobuf code"),
               require_tool("protoc-gen-go-grpc", "to generate the Go gRPC code")]
    _require_go_packages()
    key = (name, proto)
    if key in _built:
        return _built[key]

    async def build(binary: str) -> None:
        global _gopath
        if _gopath is None:
            _gopath = tempfile.mkdtemp(prefix="rpcd-go-grpc-")
            atexit.register(shutil.rmtree, _gopath, True)
        generated = Path(_gopath, "src", proto.go_package)
        if not generated.is_dir():
            generated.mkdir(parents=True)
            mapping = f"M{proto.path.name}={proto.go_package}"
            code, out, err = await run(test, [
                protoc, "-I", str(proto.path.parent),
                f"--go_out={generated}", "--go_opt=paths=source_relative", f"--go_opt={mapping}",
                f"--go-grpc_out={generated}", "--go-grpc_opt=paths=source_relative",
                f"--go-grpc_opt={mapping}", "--go-grpc_opt=require_unimplemented_servers=false",
                str(proto.path)])
            if code != 0:
                shutil.rmtree(generated)
                test.fail(f"protoc {proto.path} failed (exit {code}):\n{out}{err}")
        source = Path(_gopath, "src", "rpcdtests", name)
        source.mkdir(parents=True, exist_ok=True)
        shutil.copy(GO_SOURCES / name / "main.go", source / "main.go")
        code, out, err = await run(test, [go, "build", "-o", binary, "."],
                                   env=go_grpc_environment(_gopath), cwd=str(source))
        if code != 0:
            test.fail(f"go build of {GO_SOURCES / name} failed (exit {code}):\n{out}{err}")

    # Kept across runs and trial -j workers (L{tests.cache}), named by the
    # sources' hash and the versions of the tools and of Debian's Go packages.
    packages = [Path(f"/var/lib/dpkg/info/{package}.list") for package in APT_PACKAGES.split()]
    inputs = [GO_SOURCES / name, proto.path, proto.go_package,
              *(tool_stamp(tool) for tool in (go, protoc, *plugins)),
              *(tool_stamp(package) for package in packages if package.exists())]
    _built[key] = await cached_build(name, inputs, build)
    return _built[key]


class Seed003Certs:
    """
    Certificates laid out as seed 003's programs read them: C{certs/root.pem},
    C{certs/test_server.pem}/C{.key} for the server and
    C{certs/test_client.pem}/C{.key} for the client, relative to their
    working directories.

    One CA signs a server certificate for C{server.razeen.me} (the seed
    client's C{ServerName}; C{localhost} and C{127.0.0.1} too) and a client
    certificate; a second, foreign CA signs a server and a client
    certificate of its own; and the good CA signs a server certificate for
    C{wrong.example} only.

    @ivar dir: where the PEM files are (C{pki/} under it holds the good CA's).
    """

    SERVER_NAME = "server.razeen.me"

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        pki = directory / "pki"
        certs.create_dev_pki(pki, server_names=[self.SERVER_NAME], clients=["client"])
        ca = certs.load_issued_certificate(pki / "ca.pem", pki / "ca.key")
        certs.issue_server_certificate(ca, ["wrong.example"]).write(directory, "wrong")
        foreign = certs.create_ca("foreign CA")
        foreign.write(directory, "foreign-ca")
        certs.issue_server_certificate(foreign, [self.SERVER_NAME, "localhost"]).write(
            directory, "foreign-server")
        certs.issue_client_certificate(foreign, "mallory").write(directory, "mallory")

    def path(self, name: str) -> Path:
        """
        @param name: C{ca.pem}, C{server.key}, C{client.pem} (the good CA's)
            or C{wrong.pem}, C{foreign-ca.pem}, C{mallory.key}...
        @return: its path.
        """
        inner = self.dir / "pki" / name
        return inner if inner.exists() else self.dir / name

    def _layout(self, where: str, files: dict[str, str]) -> str:
        directory = self.dir / where
        (directory / "certs").mkdir(parents=True, exist_ok=True)
        for target, source in files.items():
            shutil.copy(self.path(source), directory / "certs" / target)
        return str(directory)

    def server_dir(self, cert: str = "server", client_ca: str = "ca") -> str:
        """
        A working directory for seed 003's server.

        @param cert: the stem of its certificate and key (C{server},
            C{wrong}, C{foreign-server}).
        @param client_ca: the stem of the CA it trusts for client certificates.
        @return: the directory (it holds C{certs/}).
        """
        return self._layout(f"server-{cert}-{client_ca}", {
            "test_server.pem": f"{cert}.pem", "test_server.key": f"{cert}.key",
            "root.pem": f"{client_ca}.pem"})

    def client_dir(self, cert: str = "client", server_ca: str = "ca") -> str:
        """
        A working directory for seed 003's client.

        @param cert: the stem of its certificate and key (C{client},
            C{mallory}).
        @param server_ca: the stem of the CA it trusts for the server.
        @return: the directory (it holds C{certs/}).
        """
        return self._layout(f"client-{cert}-{server_ca}", {
            "test_client.pem": f"{cert}.pem", "test_client.key": f"{cert}.key",
            "root.pem": f"{server_ca}.pem"})


async def start_go_server(test: TestCase, binary: str, cwd: str,
                          pause: str = "10ms") -> tuple[int, _Output]:
    """
    Start a Go gRPC server that logs C{listening on HOST:PORT} (seed 003's
    server, with the line marked "Added"), stopped in the test's cleanup.
    grpc-go logs warnings (failed handshakes among them): the seed's
    programs speak TLS 1.3, where a client whose certificate is refused
    may only see the connection close, and the server says why.

    @param test: the test.
    @param binary: the server's executable.
    @param cwd: its working directory (where its C{certs/} are).
    @param pause: the seed server's pauses between stream messages (its
        C{SEED003_PAUSE}, a Go duration; the seed's own is C{1s}).
    @return: the port it listens on, and its output.
    """
    return await start_listening(test, [binary], cwd, {"GRPC_GO_LOG_SEVERITY_LEVEL": "warning",
                                                       "SEED003_PAUSE": pause})


async def start_listening(test: TestCase, argv: list[str], cwd: str | None = None,
                          env: dict[str, str] | None = None) -> tuple[int, _Output]:
    """
    Start a server process that prints C{listening on HOST:PORT}, stopped
    (SIGKILL) in the test's cleanup.

    @param test: the test.
    @param argv: the program and its arguments.
    @param cwd: its working directory.
    @param env: extra environment variables.
    @return: the port it listens on, and its output.
    """
    output = _Output()
    process = reactor.spawnProcess(output, argv[0], argv, env={**environment(), **(env or {})},
                                   path=cwd)

    async def stop() -> None:
        if output.running:
            process.signalProcess(signal.SIGKILL)
        await output.ended
    test.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    found = await output.wait_for(re.compile(r"listening on [\d.]+:(\d+)").search,
                                  f"{argv[0]}'s port", 60)
    return int(found.group(1)), output


async def shared_listening(test: TestCase, argv: list[str]) -> tuple[int, _Output, int]:
    """
    L{start_listening}, but the server is shared by the tests of this
    process that start the same C{argv} (L{tests.daemon.shared_program}).

    @return: the port it listens on, its output, and the test's mark in
        that output.
    """
    _, output, mark = shared_program(test, argv)
    found = await output.wait_for(re.compile(r"listening on [\d.]+:(\d+)").search,
                                  f"{argv[0]}'s port", 60)
    return int(found.group(1)), output, mark
