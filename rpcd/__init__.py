"""
rpcd: an RPC daemon and client library on Twisted.

Go's net/rpc made remote calls feel local; rpcd does the same for Python and
speaks Go's wire formats too, so stock Go clients and servers interoperate.
"""
