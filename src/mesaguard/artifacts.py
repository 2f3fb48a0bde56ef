"""The file header every mesaguard artifact shares: format tag, schema version, content hash, signature.

Calibrations, scopes and policies are JSON objects; their large arrays and weights
live in binary sidecars whose SHA-256 the JSON records (:func:`write_sidecar`,
:func:`read_sidecar`: safetensors, never pickle, the size and hash checked before
parsing; :func:`pack_arrays` and :func:`unpack_arrays` replace a large float list
by a named reference and back). Every such JSON object starts and ends with the
same header::

    {"format": "mesaguard.calibration", "schema_version": 1, ...the body...,
     "content_hash": "sha256:...", "signature": {...}}

``content_hash``
    SHA-256 of the *canonical payload*: the JSON of every field but
    ``content_hash`` and ``signature``, keys sorted, no whitespace, no NaN or
    Infinity. The body records each sidecar's hash, so the content hash covers
    the sidecars too. It says the file is intact, not who made it.
``signature`` (optional)
    Ed25519 over the content hash, ``{"algorithm": "ed25519", "key_id": ...,
    "value": <base64>}`` (:mod:`mesaguard.signing`, which makes, loads and
    checks the keys). It covers exactly what the content hash covers: every
    field, every sidecar.

On load (:meth:`Kind.open`), in this order: the object has this kind's
``format``; its ``schema_version`` is one this mesaguard reads (else an error
naming the file's version and the expected one); no number in it is NaN or
infinite (the field is named); the content hash matches; and, when the caller
passes ``verify_key``, the signature is present, made by one of those keys and
valid. Then each artifact reads its fields through :class:`Fields`, which checks
every value for what it means and names the file, the field, the value and what
was expected. All errors are the artifact's own error class (a ``ValueError``).

The keys (:func:`generate_key`, :func:`keygen`, :func:`load_signing_key`,
:func:`load_verify_key`, :func:`key_id`) live in :mod:`mesaguard.signing` and are
importable from here too. See ``docs/signing.md``.

>>> kind = Kind("demo", "mesaguard.demo", 1, ValueError, "Make it again.")
>>> key = generate_key()
>>> data = kind.seal({"threshold": 2.5}, signing_key=key)
>>> sorted(data)
['content_hash', 'format', 'schema_version', 'signature', 'threshold']
>>> kind.open(data, "demo.json", verify_key=key.public_key())
1
>>> kind.open({**data, "threshold": 3.0}, "demo.json")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: demo.json is corrupt: its content hash does not match its content (field content_hash is ...
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mesaguard.fields import Fields, show
from mesaguard.signing import (
    SIGNATURE_CONTEXT,
    VerifyKeys,
    generate_key,
    key_id,
    keygen,
    load_signing_key,
    load_verify_key,
    sign,
    trusted_keys,
    verifies,
)

__all__ = [
    "SIGNATURE_CONTEXT",
    "ArtifactError",
    "Fields",
    "Kind",
    "VerifyKeys",
    "arrays_hash",
    "content_hash",
    "find_nonfinite",
    "generate_key",
    "key_id",
    "keygen",
    "large_float_array",
    "load_signing_key",
    "load_verify_key",
    "pack_arrays",
    "read_sidecar",
    "unpack_arrays",
    "write_sidecar",
]

HEADER = ("format", "schema_version")
TRAILER = ("content_hash", "signature")


class ArtifactError(ValueError):
    """A key file that is missing or not a key, or an artifact body that cannot be sealed."""


def content_hash(body: Mapping[str, Any]) -> str:
    """``"sha256:"`` and the hex SHA-256 of ``body``'s canonical JSON (sorted keys, no whitespace, finite numbers).

    >>> content_hash({"b": 1, "a": [0.5]}) == content_hash({"a": [0.5], "b": 1})
    True
    """
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def arrays_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """``"sha256:"`` and the hex SHA-256 of named arrays: each name, dtype, shape and bytes, names sorted."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def find_nonfinite(value: Any, path: str = "") -> tuple[str, float] | None:
    """The path and value of the first NaN or infinite float in a parsed JSON value, or ``None``.

    >>> find_nonfinite({"a": [1.0, {"b": float("inf")}]})
    ('a[1].b', inf)
    """
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, v = stack.pop()
        if type(v) is float:
            if not math.isfinite(v):
                return where, v
        elif isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), x) for k, x in reversed(list(v.items())))
        elif isinstance(v, list):
            if all(type(x) is float or type(x) is int for x in v):  # the common case, at NumPy speed
                if v and not np.isfinite(np.asarray(v, dtype=np.float64)).all():
                    i = next(i for i, x in enumerate(v) if not math.isfinite(x))
                    return f"{where}[{i}]", v[i]
            else:
                stack.extend((f"{where}[{i}]", x) for i, x in reversed(list(enumerate(v))))
    return None


# -- the header ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One kind of artifact: its name, format tag, schema version, error class and how to make a good file.

    ``older`` lists older schema versions still read (with their content hash);
    ``unhashed`` older ones that had no content hash (they cannot carry a signature).
    """

    what: str
    format: str
    schema_version: int
    error: type[ValueError]
    again: str
    unhashed: frozenset[int] = frozenset()
    older: frozenset[int] = frozenset()

    def seal(self, body: Mapping[str, Any], signing_key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        """The file's JSON object: header, ``body``, content hash and (with ``signing_key``) signature."""
        reserved = [k for k in (*HEADER, *TRAILER) if k in body]
        if reserved:
            raise ArtifactError(f"a {self.what} body may not set {reserved}: the header writes them")
        payload = {"format": self.format, "schema_version": self.schema_version, **body}
        bad = find_nonfinite(payload)
        if bad is not None:
            raise self.error(f"cannot save a {self.what} with field {bad[0]} = {bad[1]!r}; expected finite numbers")
        digest = content_hash(payload)
        out = {**payload, "content_hash": digest}
        if signing_key is not None:
            out["signature"] = sign(digest, signing_key)
        return out

    def open(self, data: Any, source: str, verify_key: VerifyKeys = None) -> int:
        """Check ``data``'s header (see the module docstring); return its schema version.

        Raises ``self.error`` naming ``source`` and what is wrong.
        """
        trusted = trusted_keys(verify_key)
        if not isinstance(data, dict) or data.get("format") != self.format:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise self.error(
                f"{source} is not a mesaguard {self.what} file "
                f"(field format is {show(found)}; expected {self.format!r})"
            )
        version = data.get("schema_version")
        readable = sorted({self.schema_version, *self.unhashed, *self.older})
        if type(version) is not int or version not in readable:
            older = f" (and the older {', '.join(map(str, readable[:-1]))})" if len(readable) > 1 else ""
            raise self.error(
                f"{source}: schema version {show(version)}; this mesaguard reads version {self.schema_version}"
                f"{older}. {self.again}"
            )
        bad = find_nonfinite(data)
        if bad is not None:
            raise self.error(
                f"{source}: field {bad[0]} is {bad[1]!r}; expected a finite number (JSON has no NaN or Infinity)"
            )
        if version in self.unhashed:
            if trusted:
                raise self.error(
                    f"{source}: field signature is missing: the file is unsigned (schema version {version} has no "
                    f"content hash or signature); expected a signature by {', '.join(map(key_id, trusted))}. "
                    f"{self.again}"
                )
            return version
        payload = {k: v for k, v in data.items() if k not in TRAILER}
        digest = data.get("content_hash")
        if digest != content_hash(payload):
            raise self.error(
                f"{source} is corrupt: its content hash does not match its content (field content_hash is "
                f"{show(digest)}); expected the SHA-256 of the canonical payload"
            )
        if trusted:
            self._verify(data.get("signature"), digest, trusted, source)
        return version

    def _verify(self, signature: Any, digest: str, trusted: Sequence[Ed25519PublicKey], source: str) -> None:
        names = ", ".join(map(key_id, trusted))
        if signature is None:
            raise self.error(
                f"{source}: field signature is missing: the file is unsigned; expected a signature by {names} "
                f"(save(..., signing_key=...) with the team's key)"
            )
        fields = Fields(signature, source, self.error, "signature")
        algorithm = fields.text("algorithm")
        if algorithm != "ed25519":
            fields.fail("algorithm", algorithm, "'ed25519'")
        kid, text = fields.text("key_id"), fields.text("value")
        key = next((k for k in trusted if key_id(k) == kid), None)
        if key is None:
            fields.fail("key_id", kid, f"one of the keys trusted here ({names}): the file is signed by another key")
        if not verifies(key, text, digest):
            raise self.error(
                f"{source}: field signature.value does not verify with key {kid}: the file was changed after "
                f"signing, or the signature is forged"
            )


# -- binary sidecar -------------------------------------------------------------------------


def large_float_array(value: Any, minimum: int) -> np.ndarray | None:
    """``value`` as a float64 array when it is a 1-D or rectangular 2-D list of at least ``minimum`` JSON floats
    (never ints, which would not come back as ints); else ``None``."""
    if not isinstance(value, list) or not value:
        return None
    rows = value if isinstance(value[0], list) else [value]
    width = len(rows[0])
    if len(rows) * width < minimum:
        return None
    if not all(isinstance(r, list) and len(r) == width and all(type(x) is float for x in r) for r in rows):
        return None
    return np.array(value, dtype=np.float64)


def pack_arrays(params: Mapping[str, Any], prefix: str, minimum: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """``params`` with each large float list (or array) replaced by a reference to ``arrays[prefix + key]``.

    A reference is ``{"$array": name, "shape": [...], "layout": "full" | "tril"}``; a square matrix
    whose strict upper triangle is all +0.0 is stored as its lower triangle (``"tril"``), half the bytes.
    """
    out: dict[str, Any] = {}
    for key, value in params.items():
        a = np.asarray(value, dtype=np.float64) if isinstance(value, np.ndarray) else large_float_array(value, minimum)
        if a is None or a.size < minimum or a.ndim not in (1, 2):
            out[key] = value.tolist() if isinstance(value, np.ndarray) else value
            continue
        name, layout = f"{prefix}{key}", "full"
        if a.ndim == 2 and a.shape[0] == a.shape[1]:
            upper = a[np.triu_indices(a.shape[0], 1)]
            if not upper.any() and not np.signbit(upper).any():
                a, layout = a[np.tril_indices(a.shape[0])], "tril"
        arrays[name] = np.ascontiguousarray(a)
        out[key] = {"$array": name, "shape": list(np.shape(value)), "layout": layout}
    return out


def unpack_arrays(f: Fields, key: str, arrays: Mapping[str, np.ndarray], used: set[str]) -> Any:
    """The value of field ``key`` with an array reference (see :func:`pack_arrays`) replaced by its
    read-only float64 array, checked against the reference's shape and layout; other values as they are."""
    ref = f.get(key)
    if not (isinstance(ref, dict) and "$array" in ref):
        return ref
    r = Fields(ref, f.source, f.error, f.where(key))
    name, layout, shape = r.text("$array"), r.text("layout"), r.shape("shape")
    assert shape is not None
    if name not in arrays:
        r.fail("$array", name, f"the name of an array in the sidecar (it holds {sorted(arrays)})")
    if layout not in ("full", "tril") or (layout == "tril" and (len(shape) != 2 or shape[0] != shape[1])):
        r.fail("layout", layout, "'full', or 'tril' for a square shape")
    a = arrays[name]
    n = shape[0]
    stored = (n * (n + 1) // 2,) if layout == "tril" else shape
    if a.dtype != np.float64 or a.shape != tuple(stored):
        r.fail("$array", name, f"float64 of shape {list(stored)}; the sidecar holds {a.dtype} {list(a.shape)}")
    if not np.isfinite(a).all():
        r.fail("$array", name, "an array of finite numbers; the sidecar's holds NaN or infinities")
    if layout == "tril":
        full = np.zeros((n, n))
        full[np.tril_indices(n)] = a
        a = full
    used.add(name)
    a.flags.writeable = False
    return a


def write_sidecar(path: Path, arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Write ``arrays`` to ``path`` (safetensors, atomically); the JSON entry that references it: file and SHA-256."""
    import safetensors.numpy

    from mesaguard.files import write_atomic

    data = safetensors.numpy.save(dict(arrays))
    write_atomic(path, data)
    return {"file": path.name, "hash": "sha256:" + hashlib.sha256(data).hexdigest()}


def read_sidecar(json_path: Path, f: Fields, max_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of the sidecar that field ``f`` (``{"file", "hash"}``) of ``json_path`` references.

    Its size (at most ``max_bytes``) and SHA-256 are checked before it is parsed; no pickle.
    """
    import safetensors.numpy

    path = json_path.with_name(Path(f.text("file")).name)
    expected = f.text("hash")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise f.error(f"{path}: {size} bytes; expected at most {max_bytes} for the arrays of {json_path.name}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise f.error(f"{json_path}: its arrays file {path} is missing; save it again") from None
    except OSError as exc:
        raise f.error(f"{path}: cannot read the arrays file ({exc.strerror or exc})") from None
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise f.error(
            f"{path} is corrupt or belongs to another file: its SHA-256 {digest} does not match field "
            f"{f.where('hash')} ({show(expected)}) of {json_path.name}"
        )
    try:
        return safetensors.numpy.load(data)
    except Exception as exc:  # safetensors raises several types for a bad file; all mean the same here
        raise f.error(f"{path}: not a safetensors file ({type(exc).__name__}: {exc})") from None
