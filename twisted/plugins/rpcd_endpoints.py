"""
Twisted plugin drop-in: rpcd's server endpoint strings C{rpcd-tls:} and
C{mtls:}, and its C{rpcd-tls:} client string (Twisted's C{tls:} client
options, with rpcd's checks and error words); see L{rpcd.tls.endpoints} for their
syntax.

Twisted imports this module whenever anything scans for plugins, so it imports
only interfaces here and L{rpcd.tls.endpoints} when a string is parsed.  There is
deliberately no C{__init__.py} in C{twisted/} or C{twisted/plugins/}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import (
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _RPCDTLSServerParser:
    """
    Parse C{rpcd-tls:} (server-authenticated TLS) or C{mtls:} (mutual TLS)
    server endpoint descriptions.

    @ivar prefix: the endpoint type this parser handles.
    @ivar require_client_certificate: whether clients must present a
        certificate signed by C{caCerts}.
    """

    def __init__(self, prefix: str, require_client_certificate: bool) -> None:
        self.prefix = prefix
        self.require_client_certificate = require_client_certificate

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        """
        Build the endpoint; see L{rpcd.tls.endpoints.parse_tls_server}.

        @return: an L{IStreamServerEndpoint}.
        @raise ValueError: a bad description.
        @raise OSError: a certificate or key file could not be read.
        """
        from rpcd.tls.endpoints import parse_tls_server

        return parse_tls_server(
            reactor,
            *args,
            require_client_certificate=self.require_client_certificate,
            **kwargs,
        )


rpcd_tls_server_parser = _RPCDTLSServerParser("rpcd-tls", False)
rpcd_mtls_server_parser = _RPCDTLSServerParser("mtls", True)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class _RPCDTLSClientParser:
    """
    Parse C{rpcd-tls:} client endpoint descriptions (rpcd's clients send
    C{tls:} strings here, see L{rpcd.client.client_from_string}).

    @ivar prefix: the endpoint type this parser handles.
    """

    prefix = "rpcd-tls"

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        """
        Build the endpoint; see L{rpcd.tls.endpoints.parse_tls_client}.

        @return: an L{IStreamClientEndpoint}.
        @raise ValueError: a bad description.
        @raise OSError: a certificate or key file could not be read.
        """
        from rpcd.tls.endpoints import parse_tls_client

        return parse_tls_client(reactor, *args, **kwargs)


rpcd_tls_client_parser = _RPCDTLSClientParser()
