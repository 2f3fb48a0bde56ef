"""The shared artifact header: content hash, Ed25519 signatures, key files, checked fields."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from mesaguard.artifacts import (
    ArtifactError,
    Fields,
    Kind,
    content_hash,
    find_nonfinite,
    generate_key,
    key_id,
    keygen,
    load_signing_key,
    load_verify_key,
)
from mesaguard.calibration import Calibration, CalibrationError

KIND = Kind("demo", "mesaguard.demo", 3, CalibrationError, "Make it again.", unhashed=frozenset({1}))


class DemoError(ValueError):
    pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6))
def test_content_hash_is_of_the_content_not_its_layout(body) -> None:
    shuffled = dict(reversed(list(body.items())))
    assert content_hash(shuffled) == content_hash(body)
    assert content_hash(json.loads(json.dumps(body, indent=3))) == content_hash(body)


@given(st.dictionaries(st.sampled_from("abcdef"), json_values, min_size=1, max_size=6))
def test_sealed_objects_open_and_any_change_is_caught(body) -> None:
    key = generate_key()
    data = json.loads(json.dumps(KIND.seal(body, key)))
    assert KIND.open(data, "x.json", verify_key=key.public_key()) == 3
    changed = {**data, "a": ["changed", data.get("a")]}
    with pytest.raises(CalibrationError, match="x.json is corrupt"):
        KIND.open(changed, "x.json")


def test_the_signature_covers_the_content_hash() -> None:
    """A valid signature moved onto another file (its own hash correct) does not verify there."""
    key = generate_key()
    a, b = KIND.seal({"threshold": 1.0}, key), KIND.seal({"threshold": 2.0}, key)
    with pytest.raises(CalibrationError, match="field signature.value does not verify"):
        KIND.open({**b, "signature": a["signature"]}, "b.json", verify_key=key.public_key())
    assert KIND.open(b, "b.json") == 3  # without a required key the signature is not consulted


def test_several_trusted_keys_and_bad_key_arguments() -> None:
    team, other = generate_key(), generate_key()
    data = KIND.seal({"x": 1}, team)
    KIND.open(data, "x.json", verify_key=[other.public_key(), team.public_key()])
    KIND.open(data, "x.json", verify_key=team)  # a private key stands for its public key
    with pytest.raises(ArtifactError, match="empty list"):
        KIND.open(data, "x.json", verify_key=[])
    with pytest.raises(ArtifactError, match="expected Ed25519 public keys"):
        KIND.open(data, "x.json", verify_key=["not a key"])  # type: ignore[list-item]
    with pytest.raises(ArtifactError, match="expected an Ed25519 private key"):
        KIND.seal({"x": 1}, team.public_key())  # type: ignore[arg-type]


def test_seal_refuses_header_fields_and_nonfinite_values() -> None:
    with pytest.raises(ArtifactError, match=r"may not set \['content_hash'\]"):
        KIND.seal({"content_hash": "x"})
    with pytest.raises(CalibrationError, match=r"field a.b\[1\] = inf"):
        KIND.seal({"a": {"b": [0.0, float("inf")]}})


def test_header_errors_name_versions_and_legacy_files() -> None:
    data = KIND.seal({"x": 1})
    expected = r"x.json: schema version 2; this mesaguard reads version 3 \(and the older 1\)"
    with pytest.raises(CalibrationError, match=expected):
        KIND.open({**data, "schema_version": 2}, "x.json")
    with pytest.raises(CalibrationError, match=r"schema version '3'"):
        KIND.open({**data, "schema_version": "3"}, "x.json")
    legacy = {"format": "mesaguard.demo", "schema_version": 1, "x": 1}  # no hash: read as it is
    assert KIND.open(legacy, "old.json") == 1
    with pytest.raises(CalibrationError, match="old.json: field signature is missing.*schema version 1"):
        KIND.open(legacy, "old.json", verify_key=generate_key().public_key())
    with pytest.raises(CalibrationError, match=r"x.json is not a mesaguard demo file \(field format is 'list'"):
        KIND.open([1], "x.json")


def test_find_nonfinite_and_fields() -> None:
    assert find_nonfinite({"a": [1, 2.0, {"b": "nan"}], "c": True}) is None
    assert find_nonfinite([[0.0], [1.0, float("-inf")]]) == ("[1][1]", float("-inf"))
    f = Fields({"n": True, "xs": [1.0, "inf"], "shape": [2, 0], "s": 3}, "f.json", DemoError, "top")
    with pytest.raises(DemoError, match=r"f.json: field top.n is True; expected an integer >= 1"):
        f.integer("n", minimum=1)
    with pytest.raises(DemoError, match=r"f.json: field top.xs\[1\] is 'inf'; expected a finite number"):
        f.numbers("xs")
    with pytest.raises(DemoError, match=r"field top.xs holds 2 values; expected 3"):
        f.numbers("xs", length=3)
    with pytest.raises(DemoError, match=r"field top.shape is \[2, 0\]; expected a non-empty list of positive"):
        f.shape("shape")
    with pytest.raises(DemoError, match=r"field top.s is 3; expected a string"):
        f.text("s")
    with pytest.raises(DemoError, match=r"field top.missing is missing"):
        f.get("missing")
    with pytest.raises(DemoError, match=r"field top.s is 3; expected a JSON object"):
        f.object("s")


# -- key files -------------------------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path) -> None:
    private, public = keygen(tmp_path / "keys" / "team.key")
    assert public == tmp_path / "keys" / "team.key.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    signing, verify = load_signing_key(private), load_verify_key(public)
    assert key_id(signing) == key_id(verify) and key_id(verify).startswith("ed25519:")
    with pytest.raises(ArtifactError, match="refusing to overwrite a signing key"):
        keygen(private)
    assert load_signing_key(private).private_bytes_raw() == signing.private_bytes_raw()  # unchanged


def test_keys_as_raw_bytes_and_encrypted_pem(tmp_path) -> None:
    key = generate_key()
    (tmp_path / "raw.key").write_bytes(key.private_bytes_raw())
    (tmp_path / "raw.pub").write_bytes(key.public_key().public_bytes_raw())
    signing, verify = load_signing_key(tmp_path / "raw.key"), load_verify_key(tmp_path / "raw.pub")
    assert key_id(signing) == key_id(verify) == key_id(key)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"secret"))
    (tmp_path / "enc.key").write_bytes(encrypted)
    assert key_id(load_signing_key(tmp_path / "enc.key", password=b"secret")) == key_id(key)
    with pytest.raises(ArtifactError, match="enc.key: not a PEM private key"):
        load_signing_key(tmp_path / "enc.key")


def test_bad_key_files_are_named(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="no signing key file at .*nope.key"):
        load_signing_key(tmp_path / "nope.key")
    (tmp_path / "junk").write_bytes(b"hello")
    with pytest.raises(ArtifactError, match="junk: not a PEM public key"):
        load_verify_key(tmp_path / "junk")
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.key").write_bytes(ecdsa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (tmp_path / "ec.pub").write_bytes(ecdsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ArtifactError, match=r"ec.key: a key of type \w+; expected an Ed25519 signing key"):
        load_signing_key(tmp_path / "ec.key")
    with pytest.raises(ArtifactError, match=r"ec.pub: a key of type \w+; expected an Ed25519 verify key"):
        load_verify_key(tmp_path / "ec.pub")
    with pytest.raises(ArtifactError, match="cannot read the verify key"):
        load_verify_key(tmp_path)


# -- signatures round trip, every artifact ----------------------------------------------------------------------


def test_signed_calibration_round_trip_with_key_files(tmp_path) -> None:
    private, public = keygen(tmp_path / "team.key")
    rng = np.random.default_rng(0)
    cal = Calibration.fit([rng.normal(1.0, 0.5, size=10) for _ in range(40)], alpha=0.1, scenario="demo")
    path = cal.save(tmp_path / "cal.json", signing_key=load_signing_key(private))
    data = json.loads(path.read_text())
    assert data["signature"]["key_id"] == key_id(load_verify_key(public))
    assert Calibration.load(path, verify_key=load_verify_key(public)) == cal
    assert Calibration.load(path) == cal  # a guard that requires no key reads signed files too
    assert cal.to_dict() == {k: v for k, v in data.items() if k != "signature"}  # the signature adds one field


def test_signed_scope_and_policy_round_trip(tmp_path) -> None:
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticPolicy

    from mesaguard.scope import Scope
    from mesaguard.train import load_policy, save_policy

    key = generate_key()
    rng = np.random.default_rng(1)
    scope = Scope.fit([rng.normal(size=(8, 2)) for _ in range(40)], method="knn", alpha=0.1)
    loaded = Scope.load(scope.save(tmp_path / "scope.json", signing_key=key), verify_key=key.public_key())
    assert loaded.to_dict("x") == scope.to_dict("x")
    policy = ActorCriticPolicy(spaces.Box(0.0, 1.0, (4,)), spaces.Discrete(3), lambda _: 0.0, net_arch=[8])
    stem = save_policy(policy, tmp_path / "agent", signing_key=key)
    obs = rng.random((5, 4)).astype(np.float32)
    assert (load_policy(stem, verify_key=key.public_key())(obs) == policy.predict(obs, deterministic=True)[0]).all()
    weights = Path(f"{stem}.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))  # the signature covers the weights through their recorded hash
    with pytest.raises(Exception, match="does not match field weights_sha256"):
        load_policy(stem, verify_key=key.public_key())
