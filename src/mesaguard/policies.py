"""The policy file format: a Stable-Baselines3 policy as JSON + safetensors, loaded without pickle.

``save_policy`` writes two files beside each other:

* ``<stem>.json``: the header of :mod:`mesaguard.artifacts` (format, schema
  version, content hash, and a signature with ``signing_key=``), what to rebuild
  (policy class name, observation and action spaces as plain JSON, ``net_arch``,
  activation name, ...), the SHA-256 of the weights file, and metadata (for a
  trained agent, :mod:`mesaguard.train` records the scenario, timesteps, seed,
  library versions, the command that reproduces the policy and the config);
* ``<stem>.safetensors``: the weights (``safetensors.torch.save_model``).

``load_policy`` checks the header (and, with ``verify_key=``, the signature),
maps every name in the JSON through a whitelist, bounds the network's size from
the JSON alone, checks the weights' SHA-256 and their safetensors header against
the shapes the JSON implies, and only then builds the SB3 policy and loads the
weights with ``safetensors.torch.load_model(strict=True)``. Nothing is
unpickled: ``PPO.load`` (which unpickles) is never called. A file that is
missing, corrupt or does not match raises :class:`PolicyFileError` naming the
file, the field and what was expected. The result is a :class:`LoadedPolicy`,
``policy(obs) -> action``.

The agents shipped with mesaguard (package data, ``agents/``) load with
:func:`load_agent`:

>>> policy = load_agent("strawberry")
>>> from mesaguard.scenarios import make
>>> env = make("strawberry", "train")
>>> obs, _ = env.reset(seed=0)
>>> policy(obs) in range(5)
True
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor

from mesaguard.artifacts import ArtifactError, Fields, Kind, VerifyKeys
from mesaguard.files import read_json, write_atomic
from mesaguard.spaces_json import DTYPES, space_from_json, space_to_json

__all__ = [
    "ACTIVATIONS",
    "FEATURE_EXTRACTORS",
    "POLICY_CLASSES",
    "LoadedPolicy",
    "PolicyFileError",
    "load_agent",
    "load_policy",
    "save_policy",
    "shipped_agents",
]

FORMAT = "mesaguard-policy"
SCHEMA_VERSION = 2  # 2: content hash and optional signature (mesaguard.artifacts); 1 (no hash) is still read
MAX_WIDTH = 1 << 16  # a hidden layer's width
MAX_LAYERS = 64  # hidden layers per net
MAX_PARAMETERS = 50_000_000  # of a whole policy (200 MB of float32): refused before anything is allocated
MAX_OBS_SIZE = 1 << 24  # values in an observation or action space


class PolicyFileError(ArtifactError):
    """A policy file that is missing, corrupt, unsigned where a signature is required, or not what loading expects."""


POLICY = Kind(
    "policy", FORMAT, SCHEMA_VERSION, PolicyFileError, "Save it again with mesaguard.policies.save_policy.",
    unhashed=frozenset({1}),
)


# Whitelists: the only names a policy JSON may use.
POLICY_CLASSES: dict[str, type[ActorCriticPolicy]] = {"ActorCriticPolicy": ActorCriticPolicy}
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "Tanh": torch.nn.Tanh,
    "ReLU": torch.nn.ReLU,
    "ELU": torch.nn.ELU,
    "LeakyReLU": torch.nn.LeakyReLU,
    "GELU": torch.nn.GELU,
    "SiLU": torch.nn.SiLU,
}
FEATURE_EXTRACTORS: dict[str, type[torch.nn.Module]] = {"FlattenExtractor": FlattenExtractor}


class LoadedPolicy:
    """A ``policy(obs) -> action`` around an SB3 policy; no gradients.

    One observation gives one action (an ``int`` for a discrete action space);
    a batch ``(n, *obs_shape)`` gives an array of ``n`` actions. Deterministic (the
    most likely action) unless ``deterministic=False``: then actions are sampled from
    the policy's distribution with torch's global generator, as PPO acts while it learns.
    """

    def __init__(self, policy: ActorCriticPolicy, metadata: dict[str, Any], deterministic: bool = True):
        self.policy = policy
        self.metadata = metadata
        self.deterministic = deterministic

    def __call__(self, obs: Any) -> Any:
        with torch.no_grad():
            action, _ = self.policy.predict(obs, deterministic=self.deterministic)
        if isinstance(self.policy.action_space, spaces.Discrete) and np.ndim(action) == 0:
            return int(action)
        return action

    def __repr__(self) -> str:
        return f"LoadedPolicy({self.metadata.get('scenario', '?')!r}, command={self.metadata.get('command')!r})"


def save_policy(
    model: PPO | ActorCriticPolicy,
    path_stem: str | os.PathLike[str],
    metadata: dict[str, Any] | None = None,
    signing_key: Ed25519PrivateKey | None = None,
) -> Path:
    """Write ``<stem>.json`` and ``<stem>.safetensors`` for ``model`` (a PPO model or its policy).

    Returns the stem. Each file is written atomically (temporary file, then rename).
    With ``signing_key`` the JSON is signed (:mod:`mesaguard.artifacts`); the
    signature covers the weights through their recorded SHA-256.
    """
    policy = model.policy if isinstance(model, PPO) else model
    name = type(policy).__name__
    if name not in POLICY_CLASSES or type(policy) is not POLICY_CLASSES[name]:
        raise PolicyFileError(f"cannot ship a {name}; expected one of {sorted(POLICY_CLASSES)}")
    kwargs = policy._get_constructor_parameters()
    activation = kwargs["activation_fn"].__name__
    extractor = kwargs["features_extractor_class"].__name__
    if activation not in ACTIVATIONS or extractor not in FEATURE_EXTRACTORS:
        raise PolicyFileError(
            f"cannot ship activation {activation!r} / features extractor {extractor!r}; "
            f"expected one of {sorted(ACTIVATIONS)} / {sorted(FEATURE_EXTRACTORS)}"
        )
    if kwargs.get("features_extractor_kwargs") or kwargs.get("use_sde"):
        raise PolicyFileError("cannot ship a policy with features_extractor_kwargs or use_sde")
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = _beside(stem, ".safetensors")
    with tempfile.TemporaryDirectory() as scratch:  # save_model writes a file; the bytes then go in atomically
        tmp = Path(scratch) / weights.name
        safetensors.torch.save_model(policy, tmp)
        data = tmp.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    write_atomic(weights, data)
    body = {
        "policy_class": name,
        "observation_space": space_to_json(policy.observation_space),
        "action_space": space_to_json(policy.action_space),
        "net_arch": kwargs["net_arch"],
        "activation": activation,
        "features_extractor": extractor,
        "share_features_extractor": policy.share_features_extractor,
        "normalize_images": kwargs["normalize_images"],
        "ortho_init": kwargs["ortho_init"],
        "log_std_init": kwargs["log_std_init"],
        "weights_file": weights.name,
        "weights_sha256": digest,
        "metadata": metadata or {},
    }
    config = POLICY.seal(body, signing_key)
    write_atomic(_beside(stem, ".json"), json.dumps(config, indent=2, allow_nan=False) + "\n")
    return stem


def load_policy(path_stem: str | os.PathLike[str], verify_key: VerifyKeys = None) -> LoadedPolicy:
    """Rebuild a policy saved by :func:`save_policy`; never unpickles.

    Cheap checks come before expensive work, and nothing is allocated from the
    file's sizes before they are checked. In order: the JSON's header (format,
    schema version, content hash and, with ``verify_key``, the signature); every
    field (whitelisted names, spaces of at most :data:`MAX_OBS_SIZE` values,
    ``net_arch`` of positive widths whose network has at most
    :data:`MAX_PARAMETERS` parameters); the weights file's size and SHA-256; the
    tensor names and shapes in its safetensors header, against the ones the JSON
    implies; only then the policy is built and the weights loaded
    (``strict=True``). Any failure raises :class:`PolicyFileError` naming the
    file, the field and the value.
    """
    stem = Path(path_stem)
    stem = stem.with_suffix("") if stem.suffix in (".json", ".safetensors") else stem
    json_path, weights = _beside(stem, ".json"), _beside(stem, ".safetensors")
    config = _read_config(json_path, verify_key)
    f = Fields(config, str(json_path), PolicyFileError)
    expected = _tensor_shapes(f)
    if not weights.is_file():
        raise PolicyFileError(f"{weights}: missing; expected the safetensors weights beside {json_path.name}")
    limit = 8 * sum(math.prod(s) for s in expected.values()) + (1 << 20)  # float64 at most, plus the header
    if weights.stat().st_size > limit:
        raise PolicyFileError(
            f"{weights}: {weights.stat().st_size} bytes; expected at most {limit} for the network {json_path.name} "
            f"describes"
        )
    digest = _sha256(weights)
    if digest != config.get("weights_sha256"):
        raise PolicyFileError(
            f"{weights}: SHA-256 {digest} does not match field weights_sha256 ({config.get('weights_sha256')}) of "
            f"{json_path.name}; the weights are corrupt or belong to another policy"
        )
    _check_weights_header(weights, json_path, expected)
    try:
        policy_class = POLICY_CLASSES[config["policy_class"]]
        activation = ACTIVATIONS[config["activation"]]
        extractor = FEATURE_EXTRACTORS[config["features_extractor"]]
        observation_space = space_from_json(config["observation_space"])
        action_space = space_from_json(config["action_space"])
        policy = policy_class(
            observation_space,
            action_space,
            lr_schedule=lambda _: 0.0,
            net_arch=_net_arch(config["net_arch"]),
            activation_fn=activation,
            features_extractor_class=extractor,
            share_features_extractor=f.boolean("share_features_extractor"),
            normalize_images=f.boolean("normalize_images"),
            ortho_init=f.boolean("ortho_init"),
            log_std_init=f.number("log_std_init"),
        )
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, PolicyFileError):
            raise
        raise PolicyFileError(
            f"{json_path}: invalid policy description ({type(err).__name__}: {err}); expected a JSON file written "
            f"by mesaguard.policies.save_policy with policy_class in {sorted(POLICY_CLASSES)}, activation in "
            f"{sorted(ACTIVATIONS)}, features_extractor in {sorted(FEATURE_EXTRACTORS)}"
        ) from err
    try:
        safetensors.torch.load_model(policy, weights, strict=True, device="cpu")
    except Exception as err:  # safetensors raises several types for a bad file; all mean the same here
        raise PolicyFileError(
            f"{weights}: cannot load weights into the policy described by {json_path.name} "
            f"({type(err).__name__}: {err}); expected a safetensors file written by save_policy"
        ) from err
    policy.set_training_mode(False)
    return LoadedPolicy(policy, dict(config.get("metadata", {})))


def load_agent(scenario: str, impact: bool = False) -> LoadedPolicy:
    """The trained agent shipped with mesaguard for ``scenario`` (package data).

    ``impact=True``: the one trained with an impact penalty (``agents/impact/``; its
    metadata holds the command), shipped for the scenarios in :func:`shipped_agents`.
    """
    agents = resources.files("mesaguard") / "agents"
    if impact:
        agents = agents / "impact"
    shipped = shipped_agents(impact)
    if scenario not in shipped:
        kind = "impact-trained agent" if impact else "agent"
        raise PolicyFileError(f"no shipped {kind} for scenario {scenario!r}; shipped: {', '.join(shipped)}")
    with resources.as_file(agents / f"{scenario}.json") as json_path, resources.as_file(
        agents / f"{scenario}.safetensors"
    ):
        return load_policy(json_path)


def shipped_agents(impact: bool = False) -> list[str]:
    """The scenarios with a shipped agent (``impact=True``: one trained with an impact penalty)."""
    agents = resources.files("mesaguard") / "agents"
    if impact:
        agents = agents / "impact"
    return sorted(p.name[: -len(".json")] for p in agents.iterdir() if p.name.endswith(".json"))


def _beside(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix``; unlike ``Path.with_suffix`` it keeps dots in the stem (``agent.v2``)."""
    return stem.parent / f"{stem.name}{suffix}"


def _read_config(json_path: Path, verify_key: VerifyKeys = None) -> dict[str, Any]:
    config = read_json(
        json_path,
        PolicyFileError,
        missing=f"{json_path}: missing; expected a policy JSON written by save_policy",
        invalid=f"{json_path}: not valid JSON",
        after="; expected a policy JSON written by save_policy",
    )
    POLICY.open(config, str(json_path), verify_key)
    return config


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _net_arch(value: Any) -> list[int] | dict[str, list[int]]:
    if isinstance(value, list) and all(type(v) is int for v in value):
        return value
    if isinstance(value, dict) and set(value) <= {"pi", "vf"} and all(
        isinstance(v, list) and all(type(n) is int for n in v) for v in value.values()
    ):
        return value
    raise ValueError(f"net_arch {value!r}; expected a list of ints or {{'pi': [...], 'vf': [...]}}")


def _layers(f: Fields) -> tuple[list[int], list[int]]:
    """The policy and value networks' hidden widths from ``net_arch``: at most MAX_LAYERS, each in [1, MAX_WIDTH]."""
    value = f.get("net_arch")
    if isinstance(value, list):
        nets = {"pi": ("net_arch", value), "vf": ("net_arch", value)}
    elif isinstance(value, dict) and set(value) <= {"pi", "vf"}:
        nets = {k: (f"net_arch.{k}", value.get(k, [])) for k in ("pi", "vf")}
    else:
        f.fail("net_arch", value, "a list of layer widths or {'pi': [...], 'vf': [...]}")
    top = Fields({}, f.source, f.error)
    for path, widths in nets.values():
        if not isinstance(widths, list) or len(widths) > MAX_LAYERS:
            top.fail(path, widths, f"a list of at most {MAX_LAYERS} layer widths")
        layer = Fields({}, f.source, f.error, path)
        for i, w in enumerate(widths):
            if type(w) is not int or not 1 <= w <= MAX_WIDTH:
                layer.fail(i, w, f"a layer width, an integer in [1, {MAX_WIDTH}]")
    return nets["pi"][1], nets["vf"][1]


def _space_size(f: Fields, key: str) -> tuple[str, int]:
    """A space's kind and size (Discrete: n; Box: its number of values), checked before anything is allocated."""
    space = f.object(key)
    kind = space.text("type")
    if kind == "Discrete":
        space.integer("start")
        return kind, space.integer("n", minimum=1, maximum=MAX_OBS_SIZE)
    if kind == "Box":
        shape = space.shape("shape", scalar=True)
        assert shape is not None
        size = math.prod(shape)
        if size > MAX_OBS_SIZE:
            space.fail("shape", list(shape), f"at most {MAX_OBS_SIZE} values in all")
        if space.get("dtype") not in DTYPES:
            space.fail("dtype", space.get("dtype"), f"one of {sorted(DTYPES)}")
        for bound in ("low", "high"):
            _check_bound(space, bound, space.get(bound))
        return kind, size
    space.fail("type", kind, "'Box' or 'Discrete'")


def _check_bound(f: Fields, key: str | int, value: Any) -> None:
    """A Box bound: finite numbers or the strings "inf" / "-inf", nested in lists."""
    if isinstance(value, list):
        inner = Fields({}, f.source, f.error, f.where(key))
        for i, v in enumerate(value):
            _check_bound(inner, i, v)
    elif value not in ("inf", "-inf"):
        f.check_number(key, value)


def _tensor_shapes(f: Fields) -> dict[str, tuple[int, ...]]:
    """The tensors (name -> shape) the policy a JSON describes holds, computed from its fields alone.

    SB3's ``ActorCriticPolicy`` with a ``FlattenExtractor`` (no parameters): an MLP per
    net, ``action_net`` (plus ``log_std`` for a Box action), ``value_net``. Raises
    before anything is built when the network would exceed :data:`MAX_PARAMETERS`.
    """
    for key, names in (("policy_class", POLICY_CLASSES), ("activation", ACTIVATIONS),
                       ("features_extractor", FEATURE_EXTRACTORS)):
        if f.get(key) not in names:
            f.fail(key, f.get(key), f"one of {sorted(names)}")
    pi, vf = _layers(f)
    _, features = _space_size(f, "observation_space")
    action_kind, actions = _space_size(f, "action_space")
    shapes: dict[str, tuple[int, ...]] = {}
    for net, widths in (("policy_net", pi), ("value_net", vf)):
        previous = features
        for i, width in enumerate(widths):
            shapes[f"mlp_extractor.{net}.{2 * i}.weight"] = (width, previous)
            shapes[f"mlp_extractor.{net}.{2 * i}.bias"] = (width,)
            previous = width
    latent_pi, latent_vf = (pi or [features])[-1], (vf or [features])[-1]
    shapes.update({"action_net.weight": (actions, latent_pi), "action_net.bias": (actions,),
                   "value_net.weight": (1, latent_vf), "value_net.bias": (1,)})
    if action_kind == "Box":
        shapes["log_std"] = (actions,)
    total = sum(math.prod(s) for s in shapes.values())
    if total > MAX_PARAMETERS:
        f.fail("net_arch", f.get("net_arch"),
               f"a network of at most {MAX_PARAMETERS:,} parameters (this one, on these spaces, has {total:,})")
    return shapes


def _check_weights_header(weights: Path, json_path: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """The safetensors header (names, dtypes, shapes; no tensor read) holds exactly the ``expected`` tensors."""
    try:
        with safetensors.safe_open(str(weights), framework="numpy") as file:
            found = {name: (tuple(file.get_slice(name).get_shape()), file.get_slice(name).get_dtype())
                     for name in file.keys()}
    except Exception as err:  # safetensors raises several types for a bad header; all mean the same here
        raise PolicyFileError(
            f"{weights}: cannot load weights into the policy described by {json_path.name} "
            f"({type(err).__name__}: {err}); expected a safetensors file written by save_policy"
        ) from err
    problems = [f"{n} is missing" for n in sorted(set(expected) - set(found))]
    problems += [f"{n} is not part of it" for n in sorted(set(found) - set(expected))]
    problems += [
        f"{n} has shape {list(found[n][0])}, the JSON's net_arch and spaces give {list(shape)}"
        for n, shape in expected.items() if n in found and found[n][0] != shape
    ]
    problems += [f"{n} has dtype {d}" for n, (_, d) in found.items() if d not in _WEIGHTDTYPES]
    if problems:
        raise PolicyFileError(
            f"{weights}: cannot load weights into the policy described by {json_path.name}: "
            f"{'; '.join(problems[:4])}{' ...' if len(problems) > 4 else ''}; expected the tensors of that network "
            f"in floating point"
        )


_WEIGHTDTYPES = {"F16", "BF16", "F32", "F64"}

