"""Ed25519 keys for mesaguard artifacts: make, load, sign a content hash, verify a signature.

A signature is Ed25519 (RFC 8032, through ``cryptography``) over the bytes
``SIGNATURE_CONTEXT + content_hash`` (ASCII), where ``content_hash`` is the
artifact's (:mod:`mesaguard.artifacts`), stored as
``{"algorithm": "ed25519", "key_id": ..., "value": <base64>}`` (:func:`sign`).
It covers exactly what the content hash covers. ``key_id`` is ``"ed25519:"`` and
the first 16 hex digits of the SHA-256 of the raw public key: it names the key,
it proves nothing. :func:`verifies` is true only for a value made by that key
over that hash. :mod:`mesaguard.artifacts` writes and checks the signature field
of every artifact with these.

The team that fits a calibration, a scope or a policy holds the **private**
(signing) key; it never ships with a guard. :func:`keygen` writes it as an
unencrypted PKCS#8 PEM file readable by its owner only (mode 0600), beside the
public key (SubjectPublicKeyInfo PEM). Keep the private key where the artifacts
are made (a CI secret, a hardware token exporting PEM, an offline machine), sign
with ``save(..., signing_key=load_signing_key(path))``. The deployed guard gets
the **public** (verify) key at design time, from its own configuration, never
from the artifact, and loads with ``load(..., verify_key=load_verify_key(path))``:
then an unsigned file, or one signed by another key, or one changed after
signing, is an error. Several keys (rotation, several teams) are a list
(:func:`trusted_keys`). A signature does not say the artifact is *good*, only
that the key's holder made it. Keys are also read as 32 raw bytes. A key file
that is missing or not an Ed25519 key raises
:class:`~mesaguard.artifacts.ArtifactError` naming the file. See
``docs/signing.md``.

>>> key = generate_key()
>>> signature = sign("sha256:00", key)
>>> signature["key_id"] == key_id(key.public_key())
True
>>> [verifies(key.public_key(), signature["value"], digest) for digest in ("sha256:00", "sha256:01")]
[True, False]
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

if TYPE_CHECKING:
    from mesaguard.artifacts import ArtifactError

__all__ = [
    "SIGNATURE_CONTEXT",
    "VerifyKeys",
    "generate_key",
    "key_id",
    "keygen",
    "load_signing_key",
    "load_verify_key",
    "sign",
    "trusted_keys",
    "verifies",
]

SIGNATURE_CONTEXT = b"mesaguard artifact signature v1\n"

VerifyKeys = Ed25519PublicKey | Ed25519PrivateKey | Iterable[Ed25519PublicKey | Ed25519PrivateKey] | None


def _error(message: str) -> ArtifactError:
    """The error for a bad key or key file: :class:`~mesaguard.artifacts.ArtifactError`, the base of every
    artifact's error class. Imported here, not at the top: :mod:`mesaguard.artifacts` imports this module."""
    from mesaguard.artifacts import ArtifactError

    return ArtifactError(message)


def generate_key() -> Ed25519PrivateKey:
    """A new Ed25519 signing key (its ``public_key()`` verifies)."""
    return Ed25519PrivateKey.generate()


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """``"ed25519:"`` and 16 hex digits of the SHA-256 of the raw public key: a name for the key, not a proof."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def keygen(
    private_path: str | os.PathLike[str], public_path: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """Write a new key pair: the signing key (PKCS#8 PEM, mode 0600) and the verify key (``<private>.pub``, PEM).

    Refuses to overwrite an existing private key file (a key lost is every artifact
    it signed unverifiable). Returns both paths. The CLI's ``keygen`` wraps this.
    """
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path is not None else private_path.with_name(private_path.name + ".pub")
    key = generate_key()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _error(f"{private_path} exists; refusing to overwrite a signing key (remove it first)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    from mesaguard.files import write_atomic

    write_atomic(public_path, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def _key_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise _error(f"no {what} key file at {path}; make a key pair with mesaguard.signing.keygen") from None
    except OSError as exc:
        raise _error(f"{path}: cannot read the {what} key ({exc.strerror or exc})") from None


def load_signing_key(path: str | os.PathLike[str], password: bytes | None = None) -> Ed25519PrivateKey:
    """The Ed25519 signing key in ``path``: PEM (PKCS#8, optionally encrypted with ``password``) or 32 raw bytes."""
    data = _key_bytes(path, "signing")
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        raise _error(f"{path}: not a PEM private key ({exc}); expected an Ed25519 signing key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise _error(f"{path}: a key of type {type(key).__name__}; expected an Ed25519 signing key")
    return key


def load_verify_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """The Ed25519 verify (public) key in ``path``: PEM (SubjectPublicKeyInfo) or 32 raw bytes."""
    data = _key_bytes(path, "verify")
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise _error(f"{path}: not a PEM public key ({exc}); expected an Ed25519 verify key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise _error(f"{path}: a key of type {type(key).__name__}; expected an Ed25519 verify key")
    return key


def trusted_keys(verify_key: VerifyKeys) -> list[Ed25519PublicKey]:
    """The public keys ``verify_key`` names (one key, private or public, or several); ``[]`` for ``None``.

    An empty list, or anything but Ed25519 keys, is an error: a caller who asks for a
    signature check must trust at least one key.
    """
    if verify_key is None:
        return []
    keys = [verify_key] if isinstance(verify_key, (Ed25519PublicKey, Ed25519PrivateKey)) else list(verify_key)
    out = []
    for k in keys:
        if isinstance(k, Ed25519PrivateKey):
            k = k.public_key()
        if not isinstance(k, Ed25519PublicKey):
            raise _error(f"verify_key {k!r}; expected Ed25519 public keys (load_verify_key)")
        out.append(k)
    if not out:
        raise _error("verify_key is an empty list; expected at least one Ed25519 public key, or None")
    return out


def sign(digest: str, signing_key: Ed25519PrivateKey) -> dict[str, str]:
    """The signature field over content hash ``digest``: algorithm, the key's :func:`key_id`, base64 value."""
    if not isinstance(signing_key, Ed25519PrivateKey):
        raise _error(f"signing_key {signing_key!r}; expected an Ed25519 private key (load_signing_key)")
    value = signing_key.sign(SIGNATURE_CONTEXT + digest.encode("ascii"))
    return {
        "algorithm": "ed25519",
        "key_id": key_id(signing_key),
        "value": base64.b64encode(value).decode("ascii"),
    }


def verifies(key: Ed25519PublicKey, value: str, digest: str) -> bool:
    """Whether ``value`` (base64, as :func:`sign` writes it) is ``key``'s signature over content hash ``digest``."""
    try:
        key.verify(base64.b64decode(value, validate=True), SIGNATURE_CONTEXT + digest.encode("ascii"))
    except (ValueError, InvalidSignature):
        return False
    return True
