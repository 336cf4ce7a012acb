"""
TLS: the C{rpcd-tls:} and C{mtls:} endpoint parsers, who the peer is and why a
handshake failed, and the development PKI behind C{rpcd certs}.
"""
