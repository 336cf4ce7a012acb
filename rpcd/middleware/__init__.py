"""
The built-in interceptors a config names with C{use = "..."}: the access log,
rate limiting, tracing (see L{rpcd.core.interceptors} for the chain).
"""
