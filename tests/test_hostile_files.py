"""Crafted calibration, scope and policy files never switch the guard off: each raises the artifact's error,
naming the file, the field and the value (issue 15, items 1 and 6, and signed artifacts).

Every crafted file is *sealed again* (its content hash recomputed, as an attacker would) unless the case is about
the hash itself, so what stops it is the check of what the value means, not the integrity check.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from stable_baselines3.common.policies import ActorCriticPolicy

from mesaguard.artifacts import arrays_hash, generate_key
from mesaguard.calibration import (
    Calibration,
    CalibrationError,
    DetectorCalibration,
    conformal_rank,
    false_alarm_spread,
    min_episodes,
)
from mesaguard.scope import Scope, ScopeError
from mesaguard.train import PolicyFileError, load_policy, save_policy

FOUR = ["threshold", "envelope", "cusum", "meanshift"]  # the detectors the crafted cases name
TRUSTED = generate_key()
OTHER = generate_key()


def ar1_episodes(rng: np.random.Generator, n: int, T: int = 12) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        x, e = rng.normal(), np.empty(int(rng.integers(T // 2, T + 1)))
        for t in range(e.size):
            x = 0.5 * x + math.sqrt(0.75) * rng.normal()
            e[t] = 1.0 + 0.5 * x
        out.append(e)
    return out


def state_episodes(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    return [rng.normal(size=(int(rng.integers(5, 12)), 2)) for _ in range(n)]


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    policy = ActorCriticPolicy(spaces.Box(0.0, 1.0, (4,)), spaces.Discrete(3), lambda _: 0.0, net_arch=[8, 8])
    return {
        "calibration": Calibration.fit(ar1_episodes(np.random.default_rng(0), 60), alpha=0.1, scenario="ar1",
                                       detectors=FOUR),
        "calibration-long": Calibration.fit([rng.normal(1.0, 0.5, size=40) for _ in range(40)], alpha=0.1,
                                            detectors=FOUR),
        "scope": Scope.fit(state_episodes(np.random.default_rng(1), 60), method="knn", k=2, alpha=0.1),
        "scope-m": Scope.fit(state_episodes(np.random.default_rng(2), 60), method="mahalanobis", alpha=0.1),
        "policy": policy,
        "policy-box": ActorCriticPolicy(
            spaces.Box(-1.0, 1.0, (3,)), spaces.Box(-1.0, 1.0, (2,)), lambda _: 0.0, net_arch={"pi": [8], "vf": [4]}
        ),
    }


ERRORS = {
    "calibration": CalibrationError,
    "calibration-long": CalibrationError,
    "scope": ScopeError,
    "scope-m": ScopeError,
    "policy": PolicyFileError,
    "policy-box": PolicyFileError,
}


def save(kind: str, obj: Any, directory: Path, signing_key: Any = None) -> Path:
    """Save ``obj`` fresh under ``directory``; the JSON's path."""
    if kind.startswith("policy"):
        return save_policy(obj, directory / "agent", signing_key=signing_key).with_suffix(".json")
    return obj.save(directory / f"{kind}.json", signing_key=signing_key)


def load(kind: str, path: Path, verify_key: Any = None) -> Any:
    if kind.startswith("calibration"):
        return Calibration.load(path, verify_key=verify_key)
    if kind.startswith("scope"):
        return Scope.load(path, verify_key=verify_key)
    return load_policy(path, verify_key=verify_key)


def attacker_hash(body: dict[str, Any]) -> str:
    """The content hash a crafted file carries: the canonical JSON's SHA-256, NaN and Infinity allowed."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def reseal(data: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in data.items() if k not in ("content_hash", "signature")}
    out = {**body, "content_hash": attacker_hash(body)}
    if "signature" in data:
        out["signature"] = data["signature"]
    return out


def consistent_n_cal(data: dict[str, Any], n_cal: int) -> None:
    """Set ``n_cal`` and the fields derived from it, so that only the stored maxima disagree."""
    data["n_cal"] = n_cal
    data["rank"] = conformal_rank(n_cal, data["alpha"])
    data["false_alarm"] = false_alarm_spread(n_cal, data["rank"])


def set_scope_array(path: Path, data: dict[str, Any], name: str, value: np.ndarray) -> None:
    """Replace one array of a scope's npz and record the new arrays' hash, as a crafted pair of files would."""
    arrays_path = path.with_name(data["arrays"]["file"])
    with np.load(arrays_path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays[name] = value
    np.savez(arrays_path, **arrays)
    data["arrays"]["hash"] = arrays_hash(arrays)


def set_sidecar_value(path: Path, data: dict[str, Any], name: str, index: int, value: float) -> None:
    """Change one number in a calibration's sidecar and record the sidecar's new hash, as a crafted pair would."""
    import safetensors.numpy

    sidecar = path.with_name(data["arrays"]["file"])
    arrays = {k: v.copy() for k, v in safetensors.numpy.load(sidecar.read_bytes()).items()}
    arrays[name][index] = value
    raw = safetensors.numpy.save(arrays)
    sidecar.write_bytes(raw)
    data["arrays"]["hash"] = "sha256:" + hashlib.sha256(raw).hexdigest()


@dataclass
class Case:
    id: str
    kind: str
    mutate: Callable[[dict[str, Any], Path], None]
    field: str
    value: str
    seal: bool = True
    sign: Any = None  # the key the file is saved with
    verify: Any = None  # the public key the loader requires

    def __str__(self) -> str:
        return self.id


def first(*keys: str, value: Any) -> Callable[[dict[str, Any], Path], None]:
    """Set the first number of the parameter at ``keys``, whether it is one number or a list of them."""

    def mutate(data: dict[str, Any], _: Path) -> None:
        target = data
        for k in keys[:-1]:
            target = target[k]
        if isinstance(target[keys[-1]], list):
            target[keys[-1]][0] = value
        else:
            target[keys[-1]] = value

    return mutate


def setter(*keys: str | int, value: Any) -> Callable[[dict[str, Any], Path], None]:
    def mutate(data: dict[str, Any], _: Path) -> None:
        target = data
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return mutate


def calibration_cases() -> list[Case]:
    c = "calibration"
    cusum = ("detectors", "cusum")
    cases = [Case(f"threshold {v!r}", c, setter(*cusum, "threshold", value=v), "detectors.cusum.threshold", repr(v))
             for v in ("nan", "inf", "-inf", "NaN", "Infinity", float("nan"), float("inf"), -float("inf"))]
    cases += [
        Case("maxima literal Infinity", c, setter(*cusum, "maxima", 3, value=float("inf")),
             "detectors.cusum.maxima[3]", "inf"),
        Case("maxima string nan", c, setter(*cusum, "maxima", 2, value="nan"), "detectors.cusum.maxima[2]", "'nan'"),
        Case("scale 0", c, setter(*cusum, "scale", value=0.0), "detectors.cusum.scale", "0.0"),
        Case("scale negative", c, setter(*cusum, "scale", value=-1.0), "detectors.cusum.scale", "-1.0"),
        Case("scale string nan", c, setter(*cusum, "scale", value="nan"), "detectors.cusum.scale", "'nan'"),
        Case("location string -inf", c, setter(*cusum, "location", value="-inf"),
             "detectors.cusum.location", "'-inf'"),
        Case("cusum std 0", c, first(*cusum, "params", "std", value=0.0), "detectors.cusum.params.std", "0.0"),
        Case("cusum std negative", c, first(*cusum, "params", "std", value=-2.0), "detectors.cusum.params.std", "-2.0"),
        Case("cusum mean string", c, first(*cusum, "params", "mean", value="nan"),
             "detectors.cusum.params.mean", "'nan'"),
        Case("envelope mean string nan", c, setter("detectors", "envelope", "params", "mean", 3, value="nan"),
             "detectors.envelope.params.mean[3]", "'nan'"),
        Case("envelope std literal NaN", c, setter("detectors", "envelope", "params", "std", 1, value=float("nan")),
             "detectors.envelope.params.std[1]", "nan"),
        Case("envelope std 0", c, setter("detectors", "envelope", "params", "std", 0, value=0.0),
             "detectors.envelope.params.std[0]", "0.0"),
        Case("meanshift chol string inf", c, setter("detectors", "meanshift", "params", "chol", 0, 0, value="inf"),
             "detectors.meanshift.params.chol[0][0]", "'inf'"),
        Case("meanshift block past the longest episode", c, setter("detectors", "meanshift", "params", "block",
             value=10**12), "detectors.meanshift.params.block", str(10**12)),
        Case("cusum block past the longest episode", c, setter(*cusum, "params", "block", value=10**12),
             "detectors.cusum.params.block", str(10**12)),
        Case("cusum block zero", c, setter(*cusum, "params", "block", value=0), "detectors.cusum.params", "block=0"),
        Case("threshold inconsistent with maxima", c,
             lambda d, _: d["detectors"]["cusum"].__setitem__("threshold", max(d["detectors"]["cusum"]["maxima"]) + 1),
             "detectors.cusum.threshold", ""),
        Case("n_cal vs stored maxima", c, lambda d, _: consistent_n_cal(d, d["n_cal"] + 5),
             "detectors.", "holds"),
        Case("n_cal alone", c, lambda d, _: d.__setitem__("n_cal", d["n_cal"] - 1), "rank", ""),
        Case("n_cal too few for alpha", c, setter("n_cal", value=3), "n_cal", "3"),
        Case("alpha 0", c, setter("alpha", value=0.0), "alpha", "0.0"),
        Case("alpha string", c, setter("alpha", value="0.1"), "alpha", "'0.1'"),
        Case("obs_shape negative", c, setter("obs_shape", value=[-3]), "obs_shape", "[-3]"),
        Case("false_alarm edited", c, setter("false_alarm", "mean", value=0.0), "false_alarm.mean", "0.0"),
        Case("wrong schema", c, setter("schema_version", value=99), "schema version", "99"),
        Case("old schema", c, setter("schema_version", value=0), "schema version", "0"),
        Case("foreign format", c, setter("format", value="mesaguard.scope"), "format", "'mesaguard.scope'"),
        Case("bad hash", c, setter(*cusum, "threshold", value=0.0), "content_hash", "sha256:", seal=False),
    ]
    long = "calibration-long"
    chol = "detectors.meanshift.params.chol.$array"
    cases += [
        Case(f"sidecar chol {v}", long, lambda d, p, v=v: set_sidecar_value(p, d, "meanshift.chol", 7, v),
             chol, "'meanshift.chol'") for v in (float("nan"), float("inf"), -float("inf"))
    ]
    cases += [
        Case("sidecar reference shape", long,
             setter("detectors", "meanshift", "params", "chol", "shape", value=[41, 41]), chol, "[861]"),
        Case("sidecar reference layout", long, setter("detectors", "meanshift", "params", "chol", "layout", value="x"),
             "chol.layout", "'x'"),
        Case("sidecar hash", long, setter("arrays", "hash", value="sha256:0"), "arrays.hash", "'sha256:0'"),
        Case("sidecar file elsewhere", long, setter("arrays", "file", value="../../etc/passwd"),
             "arrays file", "passwd"),
    ]
    return cases


def scope_cases() -> list[Case]:
    s = "scope"
    cases = [Case(f"scope threshold {v!r}", s, setter("threshold", value=v), "threshold", repr(v))
             for v in ("nan", "inf", float("nan"), float("inf"))]
    cases += [
        Case("scope threshold inconsistent", s, lambda d, _: d.__setitem__("threshold", max(d["maxima"]) * 2),
             "threshold", ""),
        Case("scope maxima string", s, setter("maxima", 0, value="-inf"), "maxima[0]", "'-inf'"),
        Case("scope n_cal vs maxima", s, lambda d, _: consistent_n_cal(d, d["n_cal"] + 1), "maxima", "holds"),
        Case("scope slack negative", s, setter("slack", value=-1.0), "slack", "-1.0"),
        Case("scope slack string", s, setter("slack", value="inf"), "slack", "'inf'"),
        Case("scope k 0", s, setter("k", value=0), "k", "0"),
        Case("scope method", s, setter("method", value="os.system"), "method", "'os.system'"),
        Case("scope obs_shape", s, setter("obs_shape", value=[0]), "obs_shape", "[0]"),
        Case("scope reference NaN", s,
             lambda d, p: set_scope_array(p, d, "reference_scores", np.array([0.1, np.nan, 0.3])),
             "reference_scores", "non-finite"),
        Case("scope states of another width", s,
             lambda d, p: set_scope_array(p, d, "states", np.zeros((10, 3))), "states", "(10, 3)"),
        Case("scope states as strings", s,
             lambda d, p: set_scope_array(p, d, "states", np.array([["nan", "1"]] * 10)), "states", "dtype"),
        Case("scope precision not definite", "scope-m",
             lambda d, p: set_scope_array(p, d, "precision", -np.eye(2)), "precision", "not symmetric positive"),
        Case("scope precision zero", "scope-m",
             lambda d, p: set_scope_array(p, d, "precision", np.zeros((2, 2))), "precision", "not symmetric positive"),
        Case("scope wrong schema", s, setter("schema_version", value=2), "schema version", "2"),
        Case("scope bad hash", s, setter("threshold", value=0.0), "content_hash", "sha256:", seal=False),
        Case("scope arrays hash", s, setter("arrays", "hash", value="sha256:00"), "hash does not match", ""),
    ]
    return cases


def policy_cases() -> list[Case]:
    p = "policy"
    return [
        Case("net_arch 3000x3000 on 8x8 weights", p, setter("net_arch", value=[3000, 3000]),
             "mlp_extractor.policy_net.0.weight", "[3000, 4]"),
        Case("net_arch 6000x6000", p, setter("net_arch", value=[6000, 6000]), "net_arch", "[6000, 6000]"),
        Case("net_arch 60000x60000", p, setter("net_arch", value=[60000, 60000]), "net_arch", "[60000, 60000]"),
        Case("net_arch 100000", p, setter("net_arch", value=[100000, 100000]), "net_arch[0]", "100000"),
        Case("net_arch -1", p, setter("net_arch", value=[-1]), "net_arch[0]", "-1"),
        Case("net_arch 0 in pi", p, setter("net_arch", value={"pi": [0], "vf": [8]}), "net_arch.pi[0]", "0"),
        Case("net_arch a string", p, setter("net_arch", value="__import__('os')"), "net_arch", "__import__"),
        Case("net_arch 1000 layers", p, setter("net_arch", value=[8] * 1000), "net_arch", "[8, 8"),
        Case("observation of a billion values", p, setter("observation_space", "shape", value=[10**9]),
             "observation_space.shape", "[1000000000]"),
        Case("actions -3", p, setter("action_space", "n", value=-3), "action_space.n", "-3"),
        Case("actions huge", p, setter("action_space", "n", value=10**12), "action_space.n", "1000000000000"),
        Case("Box bound nan", p, setter("observation_space", "low", value="nan"), "observation_space.low", "'nan'"),
        Case("log_std_init string", p, setter("log_std_init", value="nan"), "log_std_init", "'nan'"),
        Case("log_std_init literal NaN", p, setter("log_std_init", value=float("nan")), "log_std_init", "nan"),
        Case("ortho_init not a bool", p, setter("ortho_init", value="yes"), "ortho_init", "'yes'"),
        Case("activation outside whitelist", p, setter("activation", value="os.system"), "activation", "'os.system'"),
        Case("weights hash", p, setter("weights_sha256", value="0" * 64), "weights_sha256", "0000"),
        Case("policy wrong schema", p, setter("schema_version", value=3), "schema version", "3"),
        Case("policy bad hash", p, setter("log_std_init", value=1.0), "content_hash", "sha256:", seal=False),
        Case("box policy log_std shape", "policy-box", setter("action_space", "shape", value=[5]),
             "log_std", "[5]"),
    ]


def signature_cases() -> list[Case]:
    out = []
    for kind in ("calibration", "calibration-long", "scope", "policy"):
        out += [
            Case(f"{kind} unsigned, key required", kind, lambda d, p: None, "signature", "unsigned",
                 verify=TRUSTED.public_key()),
            Case(f"{kind} signed by another key", kind, lambda d, p: None, "signature.key_id", "ed25519:",
                 sign=OTHER, verify=TRUSTED.public_key()),
            Case(f"{kind} changed after signing", kind, setter("metadata", value={"note": "edited"}),
                 "signature.value", "does not verify", sign=TRUSTED, verify=TRUSTED.public_key()),
            Case(f"{kind} signature garbled", kind, setter("signature", "value", value="!!"),
                 "signature.value", "does not verify", sign=TRUSTED, verify=TRUSTED.public_key()),
            Case(f"{kind} signature of another algorithm", kind, setter("signature", "algorithm", value="rsa"),
                 "signature.algorithm", "'rsa'", sign=TRUSTED, verify=TRUSTED.public_key()),
        ]
    return out


CASES = calibration_cases() + scope_cases() + policy_cases() + signature_cases()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_crafted_file_is_refused_naming_file_field_value(case: Case, fitted, tmp_path) -> None:
    path = save(case.kind, fitted[case.kind], tmp_path, signing_key=case.sign)
    data = json.loads(path.read_text())
    case.mutate(data, path)
    path.write_text(json.dumps(reseal(data) if case.seal else data, allow_nan=True))
    with pytest.raises(ERRORS[case.kind]) as info:
        load(case.kind, path, verify_key=case.verify)
    message = str(info.value)
    assert str(path.parent) in message, message
    assert case.field in message and case.value in message, message


def test_the_untouched_files_load(fitted, tmp_path) -> None:
    """The cases above fail because of their one change: the same files, unchanged, load (signed and not)."""
    for kind, obj in fitted.items():
        for key in (None, TRUSTED):
            path = save(kind, obj, tmp_path / f"{kind}-{key is not None}", signing_key=key)
            load(kind, path, verify_key=None if key is None else [OTHER.public_key(), key.public_key()])


def test_legacy_policy_needs_no_hash_but_cannot_satisfy_a_key() -> None:
    """Schema 1 policies (no content hash, as shipped before) still load; a required signature refuses them."""
    from importlib import resources

    with resources.as_file(resources.files("mesaguard") / "agents" / "strawberry.json") as path:
        assert json.loads(path.read_text())["schema_version"] == 1
        load_policy(path)
        with pytest.raises(PolicyFileError, match=r"strawberry.json: field signature is missing.*schema version 1"):
            load_policy(path, verify_key=TRUSTED.public_key())


def test_a_huge_network_is_refused_before_the_weights_are_read(fitted, tmp_path) -> None:
    """The parameter bound holds from the JSON alone: no weights file is even needed."""
    path = save("policy", fitted["policy"], tmp_path)
    path.with_suffix(".safetensors").unlink()
    data = json.loads(path.read_text())
    data["net_arch"] = [60000, 60000]
    path.write_text(json.dumps(reseal(data)))
    with pytest.raises(PolicyFileError, match=r"field net_arch is \[60000, 60000\]; expected a network of at most"):
        load_policy(path)


def test_weights_header_is_checked_before_the_policy_is_built(fitted, tmp_path, monkeypatch) -> None:
    """A net_arch that the stored tensors contradict never reaches the constructor (which would allocate it)."""
    path = save("policy", fitted["policy"], tmp_path)
    data = json.loads(path.read_text())
    data["net_arch"] = [3000, 3000]  # within the parameter bound; the stored tensors are 8 wide
    path.write_text(json.dumps(reseal(data)))
    built = []
    original = ActorCriticPolicy.__init__

    def recorded(self: ActorCriticPolicy, *args: Any, **kwargs: Any) -> None:  # the real constructor, recorded
        built.append(kwargs.get("net_arch"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(ActorCriticPolicy, "__init__", recorded)
    with pytest.raises(PolicyFileError, match="cannot load weights"):
        load_policy(path)
    assert built == []


def test_literal_nan_without_a_hash_names_the_field(fitted, tmp_path) -> None:
    """Literal NaN in a file whose hash was not (could not be) recomputed: the field, not a bare ValueError."""
    path = save("calibration", fitted["calibration"], tmp_path)
    text = path.read_text().replace('"alpha": 0.1', '"alpha": NaN')
    path.write_text(text)
    with pytest.raises(CalibrationError, match=rf"{path}: field alpha is nan; expected a finite number"):
        Calibration.load(path)


# -- properties ------------------------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
positive = st.floats(min_value=5e-324, allow_nan=False, allow_infinity=False)


@st.composite
def calibrations(draw: st.DrawFn) -> Calibration:
    """Any finite calibration the code can hold: free maxima, parameters, location and scale > 0."""
    alpha = draw(st.sampled_from([0.05, 0.1, 0.2, 0.5]))
    n_cal = draw(st.integers(min_episodes(alpha), 40))
    rank = conformal_rank(n_cal, alpha)
    detectors = {}
    T = draw(st.integers(1, 4))
    params = {
        "threshold": {},
        "cusum": {"mean": draw(finite), "std": draw(positive), "slack": draw(st.floats(0, 1e6))},
        "envelope": {
            "mean": draw(st.lists(finite, min_size=T, max_size=T)),
            "std": draw(st.lists(positive, min_size=T, max_size=T)),
        },
    }
    for name in draw(st.lists(st.sampled_from(sorted(params)), unique=True, min_size=1, max_size=3)):
        maxima = draw(st.lists(finite, min_size=n_cal, max_size=n_cal))
        threshold = sorted(maxima)[rank - 1]
        detectors[name] = DetectorCalibration(name, params[name], threshold, draw(finite), draw(positive), maxima)
    shape = draw(st.none() | st.lists(st.integers(1, 9), max_size=3).map(tuple))
    metadata = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5) | finite, max_size=3))
    return Calibration(draw(st.text(max_size=8)), shape, alpha, draw(st.integers(1, 10**6)), n_cal, detectors, metadata)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calibrations())
def test_any_finite_calibration_written_loads_back_identically(tmp_path, cal: Calibration) -> None:
    path = cal.save(tmp_path / "cal.json")
    assert Calibration.load(path) == cal
    assert Calibration.load(path).to_dict() == cal.to_dict()


SPECIAL = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308, 1e-300]


@st.composite
def long_calibrations(draw: st.DrawFn) -> Calibration:
    """Finite calibrations whose parameter arrays are large enough for the sidecar: any float64 values,
    extreme ones planted (signed zeros, subnormals, the largest floats), triangular factors kept triangular."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    T = draw(st.integers(32, 40))
    scale = 10.0 ** draw(st.integers(-300, 300))
    mean = rng.normal(size=1024 + T) * scale
    std = np.abs(rng.normal(size=1024 + T)) * scale + 5e-324
    cscale = 10.0 ** draw(st.integers(-100, 100))  # a factor the detector can invert without overflow
    chol = rng.normal(size=(T, T)) * cscale
    for a, special in ((mean, SPECIAL), (chol.reshape(-1), SPECIAL[:4])):
        for _ in range(draw(st.integers(0, 6))):
            a[int(rng.integers(a.size))] = draw(st.sampled_from(special))
    chol = np.tril(chol)
    np.fill_diagonal(chol, np.abs(np.diag(chol)) + cscale)
    maxima = (rng.normal(size=20) * scale).tolist()
    threshold = sorted(maxima)[conformal_rank(20, 0.1) - 1]
    params = {"envelope": {"mean": mean.tolist(), "std": std.tolist()},
              "meanshift": {"mu": rng.normal(size=T).tolist(), "chol": chol.tolist()}}
    detectors = {n: DetectorCalibration(n, p, threshold, 0.0, 1.0, maxima) for n, p in params.items()}
    return Calibration("long", None, 0.1, 20, 20, detectors)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(long_calibrations())
def test_any_finite_calibration_with_a_sidecar_loads_back_identically(tmp_path, cal: Calibration) -> None:
    path = cal.save(tmp_path / "cal.json")
    assert path.with_suffix(".safetensors").is_file()
    loaded = Calibration.load(path)
    assert loaded == cal and loaded.to_dict() == cal.to_dict()
    for name, d in cal.detectors.items():  # bit for bit, signed zeros included
        for key, value in d.params.items():
            np.testing.assert_array_equal(np.signbit(loaded.detectors[name].params[key]), np.signbit(value))


def numeric_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place a number is stored in a parsed JSON value (booleans are not numbers)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in numeric_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in numeric_paths(v, (*path, i))]
    return [path] if type(value) in (int, float) else []


KINDS = ["calibration", "calibration-long", "scope", "policy"]  # calibration-long: sidecar references too
NONFINITE = [float("nan"), float("inf"), -float("inf"), "nan", "inf", "-inf", "NaN", "Infinity", "-Infinity"]


@pytest.fixture(scope="module")
def stored(fitted, tmp_path_factory) -> dict[str, tuple[dict[str, Any], list[tuple[Any, ...]]]]:
    out = {}
    for kind in KINDS:
        data = json.loads(save(kind, fitted[kind], tmp_path_factory.mktemp(kind)).read_text())
        # metadata is free text: a string "nan" there is a string, not a number (a literal NaN is refused anywhere)
        out[kind] = (data, numeric_paths({k: v for k, v in data.items() if k != "metadata"}))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), which=st.integers(0, 10**9),
       bad=st.sampled_from(NONFINITE))
def test_no_stored_number_made_nonfinite_loads(fitted, stored, tmp_path_factory, kind, which, bad) -> None:
    """Any one stored number replaced by a non-finite value (literal or string), the file sealed again: refused."""
    data, paths = stored[kind]
    where = paths[which % len(paths)]
    assume(not (where[-2:-1] in (("low",), ("high",)) or where[-1] in ("low", "high")) or not isinstance(bad, str)
           or bad.lower() == "nan")  # "inf" / "-inf" strings are how a Box's unbounded limits are written
    crafted = json.loads(json.dumps(data))
    target = crafted
    for k in where[:-1]:
        target = target[k]
    target[where[-1]] = bad
    directory = tmp_path_factory.mktemp("mutant")
    path = save(kind, fitted[kind], directory)
    path.write_text(json.dumps(reseal(crafted), allow_nan=True))
    with pytest.raises(ERRORS[kind]) as info:
        load(kind, path)
    assert str(path) in str(info.value) or str(path.with_suffix(".safetensors")) in str(info.value)
