"""
Tests for L{rpcd.wire.gobrpc}: net/rpc sessions captured from Go, and live
Go clients and servers talking to the Python codecs.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from rpcd.wire import gob, gobrpc
from rpcd.wire.gob.varint import _int_bytes
from tests import test_gob

# A Go 1.19 net/rpc session ("gobvectors capture"): the client calls
# Arith.Multiply{7, 8}, Arith.Result{6, 7}, Arith.Divide{1, 0} (an error),
# Arith.Nope, Nope.Multiply, Bad, and Arith.Echo(sampleRich()).
# C2S is what the client wrote, S2C what the server wrote.
C2S = bytes.fromhex(
    "2fff81030101075265717565737401ff82000102010d536572766963654d6574686f6401"
    "0c000103536571010600000013ff82010e41726974682e4d756c7469706c79001eff8303"
    "0101044172677301ff84000102010141010400010142010400000007ff84010e01100013"
    "ff82010c41726974682e526573756c7401010007ff84010c010e0013ff82010c41726974"
    "682e44697669646501020005ff8401020011ff82010a41726974682e4e6f706501030007"
    "ff84010201040014ff82010d4e6f70652e4d756c7469706c7901040007ff840102010400"
    "0aff82010342616401050007ff84010201040011ff82010a41726974682e4563686f0106"
    "00ffc5ff8b030101045269636801ff8c00011201044e616d65010c000105436f756e7401"
    "0600010544656c74610104000105526174696f0108000105536d616c6c01080001015a01"
    "0e0001024f4b0102000104426c6f62010a0001045461677301ff8e00010653636f726573"
    "01ff90000105496e6e657201ff92000106496e6e65727301ff9600010642794e616d6501"
    "ff980001044772696401ff9c00010350747201ff920001074e6f7468696e6701ff920001"
    "045a65726f0104000105456d707479010c00000016ff8d020101085b5d737472696e6701"
    "ff8e00010c00001eff8f0401010e6d61705b737472696e675d696e7401ff9000010c0104"
    "00002aff9103010105496e6e657201ff9200010201054c6162656c010c00010757656967"
    "68747301ff9400000017ff93020101095b5d666c6f6174363401ff9400010800001bff95"
    "0201010c5b5d6d61696e2e496e6e657201ff960001ff92000026ff97040101156d61705b"
    "737472696e675d6d61696e2e496e6e657201ff9800010c01ff9200001aff9b010101095b"
    "325d5b335d696e7401ff9c0001ff9a010400000eff99010102ff9a000104010600007aff"
    "8c0106676f7068657201fa01000000000001fe010101fe314001fee03f01fef83fffc001"
    "010104000102ff010301610002c3bc0102017901017802010102696e0102fed03ff89c75"
    "00883ce437fe0001020001067365636f6e64000101016b0101760001020302040603080a"
    "0c010107706f696e7465640000"
)
S2C = bytes.fromhex(
    "3aff8503010108526573706f6e736501ff86000103010d536572766963654d6574686f64"
    "010c00010353657101060001054572726f72010c00000013ff86010e41726974682e4d75"
    "6c7469706c79000304007013ff86010c41726974682e526573756c7401010024ff870301"
    "0106526573756c7401ff8800010201034e756d0104000103416e73010400000007ff8801"
    "0c01540023ff86010c41726974682e4469766964650102010e646976696465206279207a"
    "65726f000aff89030102ff8a00000003ff8a0034ff86010a41726974682e4e6f70650103"
    "01217270633a2063616e27742066696e64206d6574686f642041726974682e4e6f706500"
    "03ff8a003bff86010d4e6f70652e4d756c7469706c79010401257270633a2063616e2774"
    "2066696e642073657276696365204e6f70652e4d756c7469706c790003ff8a0037ff8601"
    "034261640105012b7270633a20736572766963652f6d6574686f64207265717565737420"
    "696c6c2d666f726d65643a204261640003ff8a0011ff86010a41726974682e4563686f01"
    "0600ffc5ff8b030101045269636801ff8c00011201044e616d65010c000105436f756e74"
    "010600010544656c74610104000105526174696f0108000105536d616c6c01080001015a"
    "010e0001024f4b0102000104426c6f62010a0001045461677301ff8e00010653636f7265"
    "7301ff90000105496e6e657201ff92000106496e6e65727301ff9600010642794e616d65"
    "01ff980001044772696401ff9c00010350747201ff920001074e6f7468696e6701ff9200"
    "01045a65726f0104000105456d707479010c00000016ff8d020101085b5d737472696e67"
    "01ff8e00010c00001eff8f0401010e6d61705b737472696e675d696e7401ff9000010c01"
    "0400002aff9103010105496e6e657201ff9200010201054c6162656c010c000107576569"
    "6768747301ff9400000017ff93020101095b5d666c6f6174363401ff9400010800001bff"
    "950201010c5b5d6d61696e2e496e6e657201ff960001ff92000026ff97040101156d6170"
    "5b737472696e675d6d61696e2e496e6e657201ff9800010c01ff9200001aff9b01010109"
    "5b325d5b335d696e7401ff9c0001ff9a010400000eff99010102ff9a000104010600007a"
    "ff8c0106676f7068657201fa01000000000001fe010101fe314001fee03f01fef83fffc0"
    "01010104000102ff010301610002c3bc0102017901017802010102696e0102fed03ff89c"
    "7500883ce437fe0001020001067365636f6e64000101016b010176000102030204060308"
    "0a0c010107706f696e7465640000"
)

EXPECTED_ERRORS = {
    2: "divide by zero",
    3: "rpc: can't find method Arith.Nope",
    4: "rpc: can't find service Nope.Multiply",
    5: "rpc: service/method request ill-formed: Bad",
}

METHODS = [
    "Arith.Multiply",
    "Arith.Result",
    "Arith.Divide",
    "Arith.Nope",
    "Nope.Multiply",
    "Bad",
    "Arith.Echo",
]

RESULT = gob.Struct("Result", [gob.Field("Num", gob.Int), gob.Field("Ans", gob.Int)])


def renumber(data: bytes, ids: dict[int, int]) -> bytes:
    """
    Replace two-byte type id encodings (65..127, as definitions and uses).
    """
    for old, new in ids.items():
        for sign in (1, -1):
            data = data.replace(_int_bytes(sign * old), _int_bytes(sign * new))
    return data


def feed_bytewise(codec: Any, data: bytes) -> list[Any]:
    """Feed C{data} one byte at a time, collecting what the codec returns."""
    out = []
    for i in range(len(data)):
        out.extend(codec.feed(data[i : i + 1]))
    return out


def server_reply(method: str, arg: Any) -> tuple[str | None, Any, Any]:
    """A tiny Python net/rpc service: C{(error, result, result type)}."""
    if isinstance(arg, gob.GobError):
        return str(arg), None, None
    names = gobrpc.split_service_method(method)
    if names is None:
        return gobrpc.ill_formed(method), None, None
    service, name = names
    if service == "Arith" and name == "Multiply":
        return None, arg.a * arg.b, gob.Int
    if service == "Echo" and name in ("Rich", "Tree"):
        return None, arg, None
    if service in ("Arith", "Echo"):
        return gobrpc.cant_find_method(method), None, None
    return gobrpc.cant_find_service(method), None, None


def arg_type_for(method: str) -> Any:
    """Argument types of L{server_reply}'s service."""
    if method == "Arith.Multiply":
        return test_gob.Args
    if method.startswith("Echo."):
        return None
    return gob.DISCARD


class GoCaptureTests(SynchronousTestCase):
    """
    The codecs against bytes Go's net/rpc wrote.
    """

    def test_server_decodes_go_client(self) -> None:
        """The server codec decodes every request Go's client sent."""
        requests = gobrpc.GobServerCodec().feed(C2S)
        self.assertEqual([(seq, m) for seq, m, _ in requests], list(enumerate(METHODS)))
        self.assertEqual([a for _, _, a in requests[:6]], [
            {"A": 7, "B": 8}, {"A": 6, "B": 7}, {"A": 1, "B": 0},
            {"A": 1, "B": 2}, {"A": 1, "B": 2}, {"A": 1, "B": 2},
        ])
        self.assertEqual(requests[6][2]["Name"], "gopher")

    def test_server_bytewise_and_typed(self) -> None:
        """Fed a byte at a time, with typed and discarded arguments, the requests are the same."""
        types = {"Arith.Multiply": test_gob.Args, "Arith.Echo": test_gob.Rich}
        codec = gobrpc.GobServerCodec(lambda m: types.get(m, gob.DISCARD))
        requests = feed_bytewise(codec, C2S)
        self.assertEqual(requests[0], (0, "Arith.Multiply", test_gob.Args(7, 8)))
        self.assertEqual([a for _, _, a in requests[1:6]], [None] * 5)
        self.assertEqual(requests[6], (6, "Arith.Echo", test_gob.sample_rich()))

    def test_client_decodes_go_server(self) -> None:
        """The client codec decodes every response Go's server sent, errors included."""
        client = gobrpc.GobClientCodec()
        reply_types = [gob.Int, RESULT, RESULT, RESULT, RESULT, RESULT, test_gob.Rich]
        for seq, (method, t) in enumerate(zip(METHODS, reply_types)):
            client.encode_request(seq, method, test_gob.Args(1, 2), reply_type=t)
        responses = feed_bytewise(client, S2C)
        self.assertEqual(responses[:6], [
            (0, "Arith.Multiply", None, 56),
            (1, "Arith.Result", None, {"Num": 6, "Ans": 42}),
        ] + [(seq, METHODS[seq], EXPECTED_ERRORS[seq], None) for seq in range(2, 6)])
        self.assertEqual(responses[6], (6, "Arith.Echo", None, test_gob.sample_rich()))

    def test_error_strings(self) -> None:
        """The error helpers produce exactly Go's strings."""
        self.assertEqual(gobrpc.cant_find_method("Arith.Nope"), EXPECTED_ERRORS[3])
        self.assertEqual(gobrpc.cant_find_service("Nope.Multiply"), EXPECTED_ERRORS[4])
        self.assertEqual(gobrpc.ill_formed("Bad"), EXPECTED_ERRORS[5])
        self.assertEqual(gobrpc.split_service_method("a.b.C"), ("a.b", "C"))
        self.assertIsNone(gobrpc.split_service_method("Bad"))
        for message in EXPECTED_ERRORS.values():
            self.assertIn(message.encode(), S2C)

    def test_request_bytes_like_go(self) -> None:
        """The first request encodes to exactly the bytes Go's client wrote."""
        data = gobrpc.GobClientCodec().encode_request(0, "Arith.Multiply", test_gob.Args(7, 8))
        self.assertEqual(data, C2S[: len(data)])
        self.assertEqual(len(data), 0x30 + 0x14 + 0x1F + 0x08)

    def test_response_bytes_like_go(self) -> None:
        """A success then an error response encode like Go's, empty struct{} body included."""
        server = gobrpc.GobServerCodec()
        ok = server.encode_response(0, "Arith.Multiply", None, 56, gob.Int)
        error = server.encode_response(2, "Arith.Divide", "divide by zero")
        start = S2C.index(bytes.fromhex("23ff86010c"))
        go_error = S2C[start : start + 0x24 + 0x0B + 0x04]
        self.assertEqual(ok, renumber(S2C[: len(ok)], {67: 65}))
        self.assertEqual(error, renumber(go_error, {67: 65, 69: 66}))
        self.assertTrue(error.endswith(bytes.fromhex("0aff83030102ff840000" "0003ff8400")))


class CodecTests(SynchronousTestCase):
    """
    Behaviour of the sans-io codecs between themselves.
    """

    def test_roundtrip_out_of_order(self) -> None:
        """Requests and responses cross between the codecs, replies in any order."""
        client = gobrpc.GobClientCodec()
        server = gobrpc.GobServerCodec(arg_type_for)
        wire = client.encode_request(1, "Arith.Multiply", test_gob.Args(6, 7), reply_type=int)
        wire += client.encode_request(2, "Echo.Rich", test_gob.sample_rich(), reply_type=test_gob.Rich)
        wire += client.encode_request(3, "Nope.X", 5)
        requests = server.feed(wire)
        back = b"".join(
            server.encode_response(seq, m, *server_reply(m, a)) for seq, m, a in reversed(requests)
        )
        self.assertEqual(client.feed(back), [
            (3, "Nope.X", gobrpc.cant_find_service("Nope.X"), None),
            (2, "Echo.Rich", None, test_gob.sample_rich()),
            (1, "Arith.Multiply", None, 42),
        ])

    def test_argument_mismatch(self) -> None:
        """An argument of the wrong type comes as a GobTypeMismatch, and the stream goes on."""
        client = gobrpc.GobClientCodec()
        server = gobrpc.GobServerCodec(arg_type_for)
        wire = client.encode_request(1, "Arith.Multiply", "seven")
        wire += client.encode_request(2, "Arith.Multiply", test_gob.Args(2, 3))
        (seq1, _, bad), second = server.feed(wire)
        self.assertIsInstance(bad, gob.GobTypeMismatch)
        self.assertTrue(str(bad).startswith("gob: type mismatch"))
        self.assertEqual(second, (2, "Arith.Multiply", test_gob.Args(2, 3)))

    def test_reply_mismatch_and_unknown_seq(self) -> None:
        """A reply of the wrong type is reported as Go's client reports it; unknown seqs are skipped."""
        client = gobrpc.GobClientCodec()
        server = gobrpc.GobServerCodec()
        client.encode_request(1, "A.B", 1, reply_type=test_gob.Args)
        client.encode_request(2, "A.B", 1, reply_type=int)
        client.forget(2)
        back = server.encode_response(1, "A.B", None, "text", gob.String)
        back += server.encode_response(2, "A.B", None, 5)
        back += server.encode_response(9, "A.B", None, 6)
        (one, two, nine) = client.feed(back)
        self.assertEqual(one[:2], (1, "A.B"))
        self.assertTrue(str(one[2]).startswith("reading body gob: type mismatch"), one[2])
        self.assertEqual((two, nine), ((2, "A.B", None, None), (9, "A.B", None, None)))

    def test_failed_response_encodes_nothing(self) -> None:
        """A result that does not fit raises GobEncodeError and later responses still decode."""
        client = gobrpc.GobClientCodec()
        server = gobrpc.GobServerCodec()
        server.feed(client.encode_request(1, "A.B", 1) + client.encode_request(2, "A.B", 1))
        self.assertRaises(gob.GobEncodeError, server.encode_response, 1, "A.B", None, ["x", 1])
        back = server.encode_response(1, "A.B", "rpc: bad reply")
        back += server.encode_response(2, "A.B", None, [1, 2])
        self.assertEqual(client.feed(back), [
            (1, "A.B", "rpc: bad reply", None),
            (2, "A.B", None, [1, 2]),
        ])

    def test_bad_header(self) -> None:
        """A request header of the wrong type is a fatal GobError naming Go's message."""
        e = gob.Encoder()
        server = gobrpc.GobServerCodec()
        with self.assertRaises(gob.GobError) as cm:
            server.feed(e.encode("not a header"))
        self.assertIn("rpc: server cannot decode request", str(cm.exception))
        self.assertNotIsInstance(cm.exception, gob.GobTypeMismatch)

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_fuzz_server(self, data: st.DataObject) -> None:
        """Random and mutated request streams only ever raise GobError."""
        if data.draw(st.booleans()):
            stream = bytearray(data.draw(st.binary(max_size=200)))
        else:
            stream = bytearray(C2S)
            for _ in range(data.draw(st.integers(1, 4))):
                i = data.draw(st.integers(0, len(stream) - 1))
                stream[i] = data.draw(st.integers(0, 255))
        server = gobrpc.GobServerCodec(arg_type_for if data.draw(st.booleans()) else None)
        try:
            for i in range(0, len(stream), 50):
                server.feed(bytes(stream[i : i + 50]))
        except gob.GobError:
            pass

    @settings(max_examples=100, deadline=None)
    @given(st.data())
    def test_fuzz_client(self, data: st.DataObject) -> None:
        """Mutated response streams only ever raise GobError."""
        stream = bytearray(S2C)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(stream) - 1))
            stream[i] = data.draw(st.integers(0, 255))
        client = gobrpc.GobClientCodec()
        for seq in range(7):
            client.encode_request(seq, "A.B", 1, reply_type=RESULT if seq % 2 else None)
        try:
            client.feed(bytes(stream))
        except gob.GobError:
            pass


class LiveGoTests(SynchronousTestCase):
    """
    The codecs talking to Go's real net/rpc client and server.
    """

    def test_python_client_go_server(self) -> None:
        """The client codec calls Go's net/rpc server and decodes its replies and errors."""
        exe = test_gob.go_vectors()
        client = gobrpc.GobClientCodec()
        wire = client.encode_request(10, "Arith.Multiply", test_gob.Args(7, 8), reply_type=int)
        wire += client.encode_request(11, "Arith.Result", test_gob.Args(6, 7), reply_type=RESULT)
        wire += client.encode_request(12, "Arith.Divide", test_gob.Args(1, 0))
        wire += client.encode_request(13, "Arith.Nope", test_gob.Args(1, 0))
        wire += client.encode_request(14, "Arith.Echo", test_gob.sample_rich(), reply_type=test_gob.Rich)
        done = subprocess.run([exe, "serve"], input=wire, capture_output=True, timeout=60)
        responses = sorted(client.feed(done.stdout))
        self.assertEqual(responses, [
            (10, "Arith.Multiply", None, 56),
            (11, "Arith.Result", None, {"Num": 6, "Ans": 42}),
            (12, "Arith.Divide", "divide by zero", None),
            (13, "Arith.Nope", gobrpc.cant_find_method("Arith.Nope"), None),
            (14, "Arith.Echo", None, test_gob.sample_rich()),
        ])

    def test_go_client_python_server(self) -> None:
        """Go's net/rpc client calls the Python server codec and gets its arguments echoed back equal."""
        exe = test_gob.go_vectors()
        proc = subprocess.Popen(
            [exe, "client"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.addCleanup(proc.kill)
        server = gobrpc.GobServerCodec(arg_type_for)
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            self.assertTrue(ready, "the Go client stopped talking")
            data = os.read(fd, 65536)
            if not data:
                break
            for seq, method, arg in server.feed(data):
                proc.stdin.write(server.encode_response(seq, method, *server_reply(method, arg)))  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
        report = proc.stderr.read().decode().splitlines()  # type: ignore[union-attr]
        proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        self.assertEqual(report, [
            "Multiply 56 <nil>",
            "EchoRich equal=true err=<nil>",
            "EchoTree equal=true err=<nil>",
            "Nope rpc: can't find method Arith.Nope",
        ])
