"""The learned model's file format: ``<stem>.json`` and ``<stem>.safetensors``, checked field by field, no pickle.

``<stem>.json`` holds the project's artifact header (:mod:`mesaguard.artifacts`: format
``mesaguard.learned-model``, schema version, content hash, optional signature), the spaces (as
:mod:`mesaguard.spaces_json` writes them), the architecture, the thresholds and metadata (the command
that reproduces the file); ``<stem>.safetensors`` every array (float32; its SHA-256 is in the JSON).
Loading checks the header, every field, the sidecar's size and hash, then each array's name, dtype,
shape (from the JSON alone) and finiteness. A crafted file is a
:class:`~mesaguard.safeguards.learned.LearnedModelError` naming the file and the field.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gymnasium import spaces

from mesaguard.artifacts import Fields, VerifyKeys, read_sidecar, write_sidecar
from mesaguard.files import read_json, write_atomic
from mesaguard.policies import MAX_LAYERS, MAX_PARAMETERS, MAX_WIDTH, _space_size
from mesaguard.safeguards.learned import HEADS, KIND, LearnedModel, LearnedModelError
from mesaguard.spaces_json import space_from_json, space_to_json

__all__ = ["load_learned_file", "save_learned"]


def _beside(stem: Path, suffix: str) -> Path:
    return stem.parent / f"{stem.name}{suffix}"


def save_learned(model: LearnedModel, path_stem: str | os.PathLike[str],
                 signing_key: Ed25519PrivateKey | None = None) -> Path:
    """Write ``<stem>.json`` and ``<stem>.safetensors`` (the module docstring); return the stem."""
    stem = Path(path_stem)
    stem = stem.with_suffix("") if stem.suffix in (".json", ".safetensors") else stem
    sidecar = write_sidecar(_beside(stem, ".safetensors"), model.arrays)
    hidden = [int(model.arrays[f"w{i}"].shape[2]) for i in range(model.layers - 1)]
    body = {
        "observation_space": space_to_json(model.observation_space),
        "action_space": space_to_json(model.action_space),
        "members": model.members,
        "hidden": hidden,
        "activation": "SiLU",
        "scope_components": int(model.arrays["scope_basis"].shape[0]),
        "scope_residual": model.scope_residual,
        "harm": {
            "catastrophe_probability": model.catastrophe_probability,
            "disagreement_threshold": model.disagreement_threshold,
            "scope_threshold": model.scope_threshold,
            "alpha": model.alpha,
        },
        "arrays": sidecar,
        "metadata": model.metadata,
    }
    write_atomic(_beside(stem, ".json"), json.dumps(KIND.seal(body, signing_key), indent=2, allow_nan=False) + "\n")
    return stem


def load_learned_file(path_stem: str | os.PathLike[str], verify_key: VerifyKeys = None,
                      name: str = "learned") -> LearnedModel:
    """The model :func:`save_learned` wrote at ``path_stem``; every check of the module docstring, no pickle."""
    stem = Path(path_stem)
    stem = stem.with_suffix("") if stem.suffix in (".json", ".safetensors") else stem
    json_path = _beside(stem, ".json")
    data = read_json(json_path, LearnedModelError, missing=f"{json_path}: missing; expected a learned model JSON",
                     invalid=f"{json_path}: not valid JSON", after="; expected a learned model JSON")
    source = str(json_path)
    KIND.open(data, source, verify_key)
    f = Fields(data, source, LearnedModelError)
    _, obs_size = _space_size(f, "observation_space")
    action_kind, action_size = _space_size(f, "action_space")
    try:
        observation_space = space_from_json(f.get("observation_space"))
        action_space = space_from_json(f.get("action_space"))
    except (KeyError, TypeError, ValueError) as err:
        raise LearnedModelError(f"{source}: field observation_space or action_space: {err}") from None
    if not isinstance(observation_space, spaces.Box):
        f.fail("observation_space", f.get("observation_space"), "a Box")
    members = f.integer("members", minimum=1, maximum=64)
    hidden = f.get("hidden")
    if not (isinstance(hidden, list) and 1 <= len(hidden) <= MAX_LAYERS):
        f.fail("hidden", hidden, f"a list of 1 to {MAX_LAYERS} layer widths")
    widths = Fields({}, source, LearnedModelError, "hidden")
    for i, w in enumerate(hidden):
        if type(w) is not int or not 1 <= w <= MAX_WIDTH:
            widths.fail(i, w, f"a layer width, an integer in [1, {MAX_WIDTH}]")
    if f.text("activation") != "SiLU":
        f.fail("activation", f.get("activation"), "'SiLU'")
    dims = obs_size + action_size
    components = f.integer("scope_components", minimum=1, maximum=dims)
    expected = _shapes(members, [dims, *hidden, obs_size + HEADS], obs_size, dims, components)
    total = sum(math.prod(s) for s in expected.values())
    if total > MAX_PARAMETERS:
        f.fail("hidden", hidden, f"a network of at most {MAX_PARAMETERS:,} parameters (this one has {total:,})")
    harm = f.object("harm")
    arrays = read_sidecar(json_path, f.object("arrays"), max_bytes=4 * total + (1 << 20))
    af = Fields(data["arrays"], source, LearnedModelError, "arrays")
    problems = [f"{n} is missing" for n in sorted(set(expected) - set(arrays))]
    problems += [f"{n} is not part of it" for n in sorted(set(arrays) - set(expected))]
    present = [n for n in sorted(expected) if n in arrays]
    problems += [f"{n} is {arrays[n].dtype} {list(arrays[n].shape)}, expected float32 {list(expected[n])}"
                 for n in present if arrays[n].shape != expected[n] or arrays[n].dtype != np.float32]
    problems += [f"{n} holds NaN or infinity" for n in present if not np.isfinite(arrays[n]).all()]
    if problems:
        af.fail("file", af.get("file"), f"the arrays of the network the JSON describes: {'; '.join(problems[:4])}")
    positive = [n for n in ("in_scale", "out_scale", "scope_variance") if not (arrays[n] > 0).all()]
    if positive:
        af.fail("file", af.get("file"), f"positive {', '.join(positive)}; the file holds a value <= 0")
    return LearnedModel(
        observation_space, action_space, dict(arrays),
        scope_residual=f.number("scope_residual", positive=True),
        catastrophe_probability=harm.number("catastrophe_probability", lo=0.0, hi=1.0),
        disagreement_threshold=harm.number("disagreement_threshold", nonnegative=True),
        scope_threshold=harm.number("scope_threshold", nonnegative=True),
        alpha=harm.number("alpha", lo=0.0, hi=1.0),
        name=name,
        metadata=dict(f.object("metadata").data),
    )


def _shapes(members: int, sizes: list[int], obs_size: int, dims: int, components: int) -> dict[str, tuple[int, ...]]:
    """The arrays (name -> shape) of a model with layer ``sizes`` (input, hidden..., output)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"w{i}"] = (members, fan_in, fan_out)
        shapes[f"b{i}"] = (members, fan_out)
    shapes.update(in_mean=(dims,), in_scale=(dims,), out_mean=(obs_size + 1,), out_scale=(obs_size + 1,),
                  scope_mean=(dims,), scope_basis=(components, dims), scope_variance=(components,))
    return shapes
