"""
The rpcd twistd plugin (C{twistd rpcd}) and the seed demo services as
service plugins.  Cheap to import: nothing here loads rpcd's daemon code.
"""

from twisted.application.service import ServiceMaker

from rpcd.daemon.plugins import ServicePlugin

rpcd = ServiceMaker(
    "rpcd",
    "rpcd.daemon.tap",
    "An RPC daemon: rpcd's native protocol, Go net/rpc (gob, jsonrpc) and JSON-RPC 2.0 on one port.",
    "rpcd",
)

cal = ServicePlugin("Cal", "rpcd.examples.arith:Cal", "Squares numbers (seed 000).")
arith = ServicePlugin("Arith", "rpcd.examples.arith:Arith", "Multiplies integers (seed 004).")
service_a = ServicePlugin("ServiceA", "rpcd.examples.arith:ServiceA", "Adds integers (seed 002).")
hello = ServicePlugin("HelloService", "rpcd.examples.hello:HelloService",
                      "Per-connection greeting behind a login (seed 001).")
kvstore = ServicePlugin("KVStoreService", "rpcd.examples.kvstore:KVStoreService",
                        "In-memory key-value store with Watch (seed 001).")
test_service = ServicePlugin("TestService", "rpcd.examples.interop:TestService",
                             "gRPC's interop test service, for streaming tests (not served by default).")
