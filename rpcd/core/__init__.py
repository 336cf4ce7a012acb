"""
What a call is, whatever the wire: services and their registry, type
conversion, the call context, sessions, the dispatcher, interceptor chains,
health.  Imports L{rpcd.wire} and L{rpcd.errors}, nothing above.
"""
