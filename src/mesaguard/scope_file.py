"""Reading a scope file: every value checked for what it means, named with its file and field.

A received file is hostile until checked (DESIGN.md, fail closed): :func:`read_scope` turns a
scope's JSON and its ``.npz`` of arrays (read without pickle, their size bounded before they are
unpacked) into a :class:`~mesaguard.scope.Scope`, or a :class:`~mesaguard.scope.ScopeError` naming
the file, the field, the value and what was expected. The conformal fields are read as a
calibration's are (:mod:`mesaguard.calibration_file`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mesaguard.artifacts import Fields, VerifyKeys, arrays_hash
from mesaguard.calibration_file import read_conformal, read_threshold
from mesaguard.detectors.scorers import METHODS
from mesaguard.files import read_json
from mesaguard.scope import KIND, Scope, ScopeError

__all__ = ["MAX_ARRAY_BYTES", "read_scope"]

def read_scope(path: Path, verify_key: VerifyKeys = None) -> Scope:
    """Read and verify a scope file and its arrays: header (format, schema version, content hash), the
    arrays' hash, every value, and, with ``verify_key`` (one Ed25519 public key or several), the signature.

    Checked for what they mean: ``method``, ``k``, ``slack``; ``alpha``, ``n_cal``, ``rank`` and
    ``false_alarm`` consistent; ``n_cal`` finite maxima whose conformal quantile is the threshold; arrays of
    finite floats, of the shapes ``method`` and ``obs_shape`` give, at most :data:`MAX_ARRAY_BYTES` unpacked.
    """
    source = str(path)
    data = read_json(
        path,
        ScopeError,
        missing=f"no scope file at {path}; fit one with Scope.fit(...).save(path)",
        invalid=f"{path} is not a scope file: not valid JSON",
    )
    KIND.open(data, source, verify_key)
    f = Fields(data, source, ScopeError)
    method = f.text("method")
    if method not in METHODS:
        f.fail("method", method, f"one of {list(METHODS)}")
    k = f.integer("k", minimum=1)
    slack = None if f.get("slack") is None else f.number("slack", nonnegative=True)
    alpha, n_cal, rank = read_conformal(f)
    threshold, maxima = read_threshold(f, alpha, n_cal, rank)
    obs_shape = f.shape("obs_shape")
    assert obs_shape is not None
    metadata = f.get("metadata") if "metadata" in data else {}
    if not isinstance(metadata, dict):
        f.fail("metadata", metadata, "a JSON object")
    files = f.object("arrays")
    arrays_path = path.with_name(Path(files.text("file")).name)
    arrays = _read_arrays(arrays_path, source)
    if arrays_hash(arrays) != files.text("hash"):
        raise ScopeError(f"{arrays_path} is corrupt or belongs to another scope: its hash does not match {path}")
    _check_arrays(arrays, method, k, int(np.prod(obs_shape)), f"{arrays_path}")
    n_fit, n_reference = f.integer("n_fit", minimum=1), f.integer("n_reference", minimum=1)
    try:
        return Scope(
            method=method,
            k=k,
            slack=slack,
            alpha=alpha,
            threshold=threshold,
            obs_shape=obs_shape,
            n_fit=n_fit,
            n_reference=n_reference,
            n_cal=n_cal,
            maxima=maxima,
            arrays=arrays,
            scenario=f.text("scenario"),
            metadata=metadata,
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ScopeError):
            raise ScopeError(f"{path}: {exc}") from None
        raise ScopeError(f"{path} is malformed: {exc!r}") from None


MAX_ARRAY_BYTES = 1 << 31  # a scope's arrays, unpacked: refused beyond this before anything is read


def _read_arrays(arrays_path: Path, source: str) -> dict[str, np.ndarray]:
    """The arrays of a scope's ``.npz``, no pickle; one that would unpack beyond :data:`MAX_ARRAY_BYTES` is refused."""
    try:
        with zipfile.ZipFile(arrays_path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > MAX_ARRAY_BYTES:
            raise ScopeError(
                f"{arrays_path}: its arrays unpack to {unpacked} bytes; expected at most {MAX_ARRAY_BYTES} "
                f"(save the scope again)"
            )
        with np.load(arrays_path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise ScopeError(f"{source}: its arrays file {arrays_path} is missing; save the scope again") from None
    except (KeyError, TypeError, OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, ScopeError):
            raise
        raise ScopeError(f"{source}: its arrays file cannot be read ({exc!r}); save the scope again") from None


def _check_arrays(arrays: Mapping[str, np.ndarray], method: str, k: int, dims: int, source: str) -> None:
    """The stored arrays are finite floats of the shapes ``method`` and ``dims`` (flat obs size) give."""
    shapes: dict[str, str] = {"reference_scores": "(n,), n >= 1, sorted, >= 0"}
    if method == "knn":
        shapes["states"] = f"(m, {dims}), m >= k={k}"
    else:
        shapes.update(location=f"({dims},)", precision=f"({dims}, {dims})")
    if sorted(arrays) != sorted(shapes):
        raise ScopeError(f"{source}: holds arrays {sorted(arrays)}; expected {sorted(shapes)} for method {method!r}")
    for name, a in arrays.items():
        if a.dtype.kind != "f" or not np.isfinite(a).all():
            bad = "dtype " + str(a.dtype) if a.dtype.kind != "f" else "a non-finite value"
            raise ScopeError(f"{source}: array {name} has {bad}; expected finite floats")
    ref, ok = arrays["reference_scores"], {}
    ok["reference_scores"] = ref.ndim == 1 and ref.size >= 1 and bool((np.diff(ref) >= 0).all()) and ref[0] >= 0
    if method == "knn":
        states = arrays["states"]
        ok["states"] = states.ndim == 2 and states.shape[1] == dims and states.shape[0] >= k
    else:
        ok["location"] = arrays["location"].shape == (dims,)
        ok["precision"] = arrays["precision"].shape == (dims, dims)
    for name, good in ok.items():
        if not good:
            raise ScopeError(f"{source}: array {name} has shape {arrays[name].shape}; expected {shapes[name]}")
    if method == "mahalanobis":
        precision = arrays["precision"]
        try:
            np.linalg.cholesky(precision)
            definite = bool(np.allclose(precision, precision.T))
        except np.linalg.LinAlgError:
            definite = False
        if not definite:
            raise ScopeError(f"{source}: array precision is not symmetric positive definite; expected a precision "
                             f"matrix (the inverse of a covariance)")
