"""Ed25519 API keys: the exchange keeps the public key, the client signs with the private one.

Binance signs a request the same way whatever the key (the query string, then the body), but an
Ed25519 signature is the base64 of the Ed25519 signature of those bytes, where an HMAC one is hex.
Only an Ed25519 key may log a WebSocket API session on (``session.logon``). ``cryptography`` is
imported only when an account has such a key.
"""

from __future__ import annotations

import base64
import binascii
from typing import Callable


def ed25519_private_pem(seed: bytes) -> str:
    """A PKCS#8 PEM private key from 32 bytes (the simulator derives them from its seed)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(seed)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def ed25519_verifier(pem: str) -> Callable[[bytes, str], bool]:
    """``verify(payload, signature)`` for the key in ``pem`` (a private key, whose public half is used,
    or a public key); ValueError if ``pem`` holds no Ed25519 key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    raw = pem.encode()
    key = (serialization.load_pem_private_key(raw, password=None) if b"PRIVATE KEY" in raw
           else serialization.load_pem_public_key(raw))
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError("not an Ed25519 key")

    def verify(payload: bytes, signature: str) -> bool:
        try:
            public.verify(base64.b64decode(signature, validate=True), payload)
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True

    return verify


def ed25519_sign(private_pem: str, payload: str) -> str:
    """The signature a client sends (tests, examples): base64 of the Ed25519 signature of ``payload``."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return base64.b64encode(key.sign(payload.encode())).decode()  # type: ignore[union-attr,call-arg]
