"""TLS contexts of the listeners: built the same way when a config is validated and when a worker
applies it, so a file that `check-config` accepted is one a worker can load.

TLS 1.2 is the floor (`min_version` may raise it to 1.3); ALPN offers `h2` (when the HTTP/2 server is
enabled) and `http/1.1`; with `client_ca_file` a client certificate signed by it is required (mTLS).
"""

from __future__ import annotations

import ssl

from llmrelay.config.schema import TlsSection

ALPN_H2 = "h2"
ALPN_HTTP1 = "http/1.1"
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsFileError(Exception):
    """A certificate, key or CA file that does not load (the message names the file and why)."""


def server_context(tls: TlsSection, http2: bool = True) -> ssl.SSLContext:
    """The server-side context of a TLS listener; TlsFileError when a file does not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in reason.upper():
            raise TlsFileError(f"{tls.key_file} is not the key of the certificate in {tls.cert_file}") from None
        raise TlsFileError(f"{tls.cert_file} / {tls.key_file} do not load as a PEM certificate and key ({reason})") from None
    except OSError as exc:
        raise TlsFileError(f"{exc.filename or tls.cert_file} cannot be read ({exc.strerror or exc})") from None
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except ssl.SSLError as exc:
            raise TlsFileError(f"{tls.client_ca_file} holds no usable PEM certificate ({exc.reason or exc})") from None
        except OSError as exc:
            raise TlsFileError(f"{tls.client_ca_file} cannot be read ({exc.strerror or exc})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols([ALPN_H2, ALPN_HTTP1] if http2 else [ALPN_HTTP1])
    return context
