"""
The contracts between rpcd's parts, as zope interfaces.

Kept free of heavy imports: the twistd plugin drop-ins import this module.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface


class IRPCServiceProvider(Interface):
    """
    A Twisted plugin that offers an rpcd service.

    Any C{twisted/plugins/} drop-in on the path can provide one; the daemon's
    config then enables the service by name.  Loading is deferred so that
    scanning plugins stays cheap.
    """

    name = Attribute("The service name callers use, e.g. C{'Arith'} for C{Arith.Multiply}.")
    description = Attribute("One line saying what the service does.")

    def load() -> type:
        """
        Import the service class.

        @return: the class; instances expose methods marked with
            L{rpcd.core.service.exposed}.
        """


class IServerInterceptor(Interface):
    """
    Code around every call a daemon serves; see L{rpcd.core.interceptors} for
    how to write one.
    """

    def intercept(call: Any, proceed: Any) -> Any:
        """
        Handle one call.

        @param call: the L{rpcd.core.interceptors.ServerCall}.
        @param proceed: C{proceed(call)} runs the rest of the chain and
            returns a Deferred firing with the result or failing with an
            L{rpcd.errors.RPCError}.
        @return: the result: a value, a Deferred or a coroutine.
        @raise rpcd.errors.RPCError: to refuse the call with that code.
        """


class ICaller(Interface):
    """
    Something you can call methods through: a L{rpcd.client.client.Client}
    (one connection), a L{rpcd.cluster.balancer.Balancer} (many), a
    L{rpcd.cluster.retry.RetryingClient} (either, retried).  Attribute access
    builds service proxies (L{rpcd.client.client.ServiceAttributes}).
    """

    def call(method: str, args: Any = None, *, timeout: float | None = None,
             metadata: dict[str, Any] | None = None) -> Any:
        """
        Call a remote method.

        @param method: C{"Service.Method"}.
        @param args: the argument (a dict of keyword arguments, or a value).
        @param timeout: seconds, or None for the caller's default.
        @param metadata: sent with the call.
        @return: a Deferred firing with the result, or failing with an
            L{rpcd.errors.RPCError}.
        """

    def stream(method: str, args: Any = None, *, timeout: float | None = None,
               metadata: dict[str, Any] | None = None) -> Any:
        """
        Open a streaming call.

        @return: the stream (see L{rpcd.client.streams.ClientStream}).
        """

    def close() -> Any:
        """
        Close the connections.

        @return: a Deferred firing with C{None} once they are closed.
        """


class IClientInterceptor(Interface):
    """
    Code around every call a client makes; see L{rpcd.core.interceptors}.
    """

    def intercept(call: Any, proceed: Any) -> Any:
        """
        Handle one call.

        @param call: the L{rpcd.core.interceptors.ClientCall}.
        @param proceed: C{proceed(call)} sends it (through the rest of the
            chain) and returns a Deferred firing with the result or failing
            with an L{rpcd.errors.RPCError}.
        @return: the result: a value, a Deferred or a coroutine.
        @raise rpcd.errors.RPCError: to fail the call without sending it.
        """
