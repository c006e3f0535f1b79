"""TLS contexts: the public listener's (terminating) and the upstream client's (verifying)."""

from __future__ import annotations

import ssl

from guard.config import TLSConfig, UpstreamTLS

# Mozilla "intermediate" ciphers for TLS 1.2 (TLS 1.3 suites are not configurable
# here and are all AEAD): forward secrecy and AEAD only.
_TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """TLS 1.2+ with forward-secret AEAD ciphers, ALPN http/1.1 (the guard speaks nothing else)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    # no TLS compression (CRIME), no client-initiated renegotiation (a CPU DoS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx


def upstream_context(cfg: UpstreamTLS) -> ssl.SSLContext | bool:
    """What the HTTP client's ``ssl=`` receives; ``False`` only when verification is switched off."""
    if not cfg.verify:
        return False
    ctx = ssl.create_default_context(cafile=str(cfg.ca_bundle) if cfg.ca_bundle else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
