"""Signatures, canonical bytes, key rotation, replay memory; the interest limits and admission."""

from __future__ import annotations

import hashlib
import hmac
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from aiokafka import ConsumerRecord
from pydantic import SecretStr

from services.datamanager.interest import InterestRegistry
from shared import signing
from shared.config import ConfigError, InterestLimits, load_config
from shared.dto import ControlCommand, InterestUpdate, decode, encode, utcnow

KEY_A = SecretStr("a" * 32)
KEY_B = SecretStr("b" * 32)


def update(**kw: Any) -> InterestUpdate:
    base: dict[str, Any] = {
        "portfolio_id": "p1",
        "node_id": "n1",
        "symbols": ("AAPL", "600000.SH"),
        "update_type": "replace",
        "timestamp": utcnow(),
        "lease_s": 30.0,
    }
    return InterestUpdate(**{**base, **kw})


def command(**kw: Any) -> ControlCommand:
    base: dict[str, Any] = {
        "command": "bar_snapshot",
        "correlation_id": "cli:1",
        "timestamp": utcnow(),
        "source": "test",
        "params": {"z": 1, "a": [1, {"y": 2, "b": 3}]},
    }
    return ControlCommand(**{**base, **kw})


def verifier(**keys: SecretStr) -> signing.Verifier:
    return signing.Verifier(keys or {"a": KEY_A}, max_age_s=60, memory=1000)


def test_canonical_bytes_are_the_wire_object_without_sig_sorted() -> None:
    signed = signing.Signer("a", KEY_A).sign(command())
    raw = encode(signed)
    canon = signing.canonical_bytes(raw)
    obj = msgspec.json.decode(raw)
    del obj["sig"]
    assert canon == msgspec.json.encode(obj, order="sorted")
    assert b'"sig"' not in canon and b'"key_id":"a"' in canon
    assert canon.index(b'"a":[1,{"b":3,"y":2}]') < canon.index(b'"z":1')  # nested keys sorted too
    assert b" " not in canon.replace(b"bar_snapshot", b"")  # no whitespace
    assert signed.sig == hmac.new(b"a" * 32, canon, hashlib.sha256).hexdigest()


def test_signature_does_not_depend_on_key_order_or_whitespace() -> None:
    raw = encode(signing.Signer("a", KEY_A).sign(update()))
    obj = msgspec.json.decode(raw)
    reordered = (
        b"{\n  "
        + b", ".join(msgspec.json.encode(k) + b": " + msgspec.json.encode(obj[k]) for k in reversed(obj))
        + b"}"
    )
    assert verifier().check(reordered, decode(reordered), utcnow().timestamp(), required=True) is None  # type: ignore[arg-type]


def test_fields_unknown_to_the_verifier_are_signed_too() -> None:
    obj = msgspec.json.decode(encode(update(key_id="a")))
    obj["future_field"] = "x"
    obj.pop("sig")
    obj["sig"] = signing.mac(KEY_A, msgspec.json.encode(obj))
    raw = msgspec.json.encode(obj)
    msg = decode(raw)
    assert isinstance(msg, InterestUpdate)
    assert verifier().check(raw, msg, utcnow().timestamp(), True) is None
    obj["future_field"] = "tampered"
    raw = msgspec.json.encode(obj)
    assert verifier().check(raw, msg, utcnow().timestamp(), True) == signing.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"symbols": ["AAPL", "MSFT"]}, signing.BAD_SIGNATURE),
        ({"portfolio_id": "p2"}, signing.BAD_SIGNATURE),
        ({"lease_s": 0.001}, signing.BAD_SIGNATURE),
        ({"key_id": "b"}, signing.UNKNOWN_KEY),
        ({"sig": None}, signing.BAD_SIGNATURE),
        ({"key_id": None}, signing.BAD_SIGNATURE),
        ({"sig": "00" * 32}, signing.BAD_SIGNATURE),
    ],
)
def test_a_tampered_or_half_signed_message_is_refused(change: dict[str, Any], reason: str) -> None:
    obj = msgspec.json.decode(encode(signing.Signer("a", KEY_A).sign(update())))
    obj.update(change)
    raw = msgspec.json.encode(obj)
    msg = decode(raw)
    assert isinstance(msg, InterestUpdate)
    assert verifier().check(raw, msg, utcnow().timestamp(), required=False) == reason


def test_unsigned_passes_unless_required() -> None:
    msg = update()
    raw = encode(msg)
    assert verifier().check(raw, msg, utcnow().timestamp(), required=False) is None
    assert verifier().check(raw, msg, utcnow().timestamp(), required=True) == signing.UNSIGNED


def test_rotation_two_keys_valid_at_once() -> None:
    v = verifier(old=KEY_A, new=KEY_B)
    now = utcnow().timestamp()
    for key_id, secret in (("old", KEY_A), ("new", KEY_B)):
        msg = signing.Signer(key_id, secret).sign(command(correlation_id=f"c-{key_id}"))
        assert v.check(encode(msg), msg, now, True) is None
    wrong = signing.Signer("new", KEY_A).sign(command(correlation_id="c-wrong"))  # the old secret under the new id
    assert v.check(encode(wrong), wrong, now, True) == signing.BAD_SIGNATURE
    retired = verifier(new=KEY_B)
    msg = signing.Signer("old", KEY_A).sign(command())
    assert retired.check(encode(msg), msg, now, True) == signing.UNKNOWN_KEY


def test_freshness_window_and_replay_memory() -> None:
    v = signing.Verifier({"a": KEY_A}, max_age_s=60, memory=3)
    now = utcnow()
    msg = signing.Signer("a", KEY_A).sign(command(timestamp=now))
    raw = encode(msg)
    assert v.check(raw, msg, now.timestamp(), True) is None
    assert v.check(raw, msg, now.timestamp() + 1, True) == signing.REPLAYED
    assert v.check(raw, msg, now.timestamp() + 61, True) == signing.STALE_SIGNATURE  # and forgotten
    assert v.remembered == 0
    future = signing.Signer("a", KEY_A).sign(command(timestamp=now + timedelta(seconds=120)))
    assert v.check(encode(future), future, now.timestamp(), True) == signing.STALE_SIGNATURE
    for i in range(10):  # bounded: the oldest are forgotten first
        m = signing.Signer("a", KEY_A).sign(command(correlation_id=f"c{i}", timestamp=now))
        assert v.check(encode(m), m, now.timestamp(), True) is None
    assert v.remembered == 3


def test_the_signer_never_shows_its_secret() -> None:
    s = signing.Signer("a", KEY_A)
    assert "aaaa" not in repr(s) and "aaaa" not in str(vars(s))


def _config_dir(tmp_path: Path, live: dict[str, Any], secure: dict[str, Any] | None, mode: int = 0o600) -> Path:
    (tmp_path / "livedata.yml").write_text(yaml.safe_dump(live))
    if secure is not None:
        path = tmp_path / "secure.yml"
        path.write_text(yaml.safe_dump(secure))
        os.chmod(path, mode)
    return tmp_path


def test_config_signing_keys_from_secure_yml(tmp_path: Path) -> None:
    d = _config_dir(tmp_path, {"security": {"sign": "ops-1"}}, {"signing_keys": {"ops-1": "s" * 20, "ops-2": "t" * 20}})
    config = load_config(d, env={})
    signer = signing.signer_from_config(config)
    assert signer is not None and signer.key_id == "ops-1"
    assert signing.verifier_from_config(config).key_ids == {"ops-1", "ops-2"}


@pytest.mark.parametrize(
    ("live", "secure", "needle"),
    [
        ({"security": {"sign": "missing"}}, {"signing_keys": {"ops-1": "s" * 20}}, "signing_keys.missing: not set"),
        ({}, {"signing_keys": {"ops-1": "short-secret"}}, "signing_keys.ops-1: shorter than 16"),
        ({}, {"signing_keys": {"bad id!": "s" * 20}}, "a key id is not"),
        ({}, {"signing_keys": ["x"]}, "signing_keys: expected a mapping"),
        ({"security": {"sign": "bad id"}}, {}, "security.sign"),
        ({"security": {"require_signed": True}}, {"signing_keys": {"ops-1": "s" * 20}}, "security.sign: required"),
    ],
)
def test_config_signing_mistakes_name_the_key_never_the_secret(
    tmp_path: Path, live: dict[str, Any], secure: dict[str, Any], needle: str
) -> None:
    d = _config_dir(tmp_path, live, secure)
    with pytest.raises(ConfigError) as e:
        load_config(d, env={})
    assert needle in str(e.value)
    assert "short-secret" not in str(e.value) and "s" * 20 not in str(e.value)


def test_secure_yml_readable_by_others_warns_or_refuses(tmp_path: Path) -> None:
    d = _config_dir(tmp_path, {}, {"signing_keys": {"k": "s" * 20}}, mode=0o644)
    config = load_config(d, env={})
    assert config.file_mode_warning is not None and "mode 0644" in config.file_mode_warning
    (d / "livedata.yml").write_text(yaml.safe_dump({"security": {"strict_file_modes": True}}))
    with pytest.raises(ConfigError) as e:
        load_config(d, env={})
    message = str(e.value)
    assert len(message.splitlines()) == 1 and str(d / "secure.yml") in message and "0644" in message
    os.chmod(d / "secure.yml", 0o600)
    assert load_config(d, env={}).file_mode_warning is None


# -- interest limits ------------------------------------------------------------------------


def limited(**kw: Any) -> InterestRegistry:
    return InterestRegistry(limits=InterestLimits(**kw))


def apply(r: InterestRegistry, msg: InterestUpdate, offset: int = -1) -> tuple[str, str] | None:
    symbols = frozenset(r.validate(msg))
    problem = r.over_limit(msg, symbols)
    if problem is None:
        r.apply(msg, offset)
    return problem


def test_symbols_per_subscriber() -> None:
    r = limited(max_symbols_per_subscriber=2)
    assert apply(r, update(symbols=("AAPL", "MSFT"))) is None
    problem = apply(r, update(symbols=("IBM",), update_type="add"))
    assert problem is not None and problem[0] == "too_many_symbols"
    assert r.subscriber_symbols("p1", "n1") == {"AAPL", "MSFT"}  # the previous set stays
    assert apply(r, update(symbols=("IBM",), update_type="replace")) is None


def test_subscribers() -> None:
    r = limited(max_subscribers=2)
    assert apply(r, update(portfolio_id="a")) is None
    assert apply(r, update(portfolio_id="b")) is None
    problem = apply(r, update(portfolio_id="c"))
    assert problem is not None and problem[0] == "too_many_subscribers"
    assert apply(r, update(portfolio_id="a", symbols=("MSFT",))) is None  # a known one may change


def test_symbols_per_market_union() -> None:
    r = limited(max_symbols_per_market=2)
    assert apply(r, update(portfolio_id="a", symbols=("AAPL", "600000.SH"))) is None
    assert apply(r, update(portfolio_id="b", symbols=("AAPL", "MSFT"))) is None  # US: AAPL, MSFT
    problem = apply(r, update(portfolio_id="c", symbols=("IBM",)))
    assert problem is not None and problem[0] == "market_union_full" and "US would have 3" in problem[1]
    assert apply(r, update(portfolio_id="c", symbols=("000001.SZ",))) is None  # CN has room


def _rec(key: bytes, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("t", 0, 0, 0, 0, key, value, None, len(key), len(value), [])


def test_admission_key_ids_and_leases() -> None:
    from prometheus_client import CollectorRegistry

    from services.datamanager.admission import Admission
    from services.datamanager.metrics import DatamanagerMetrics
    from shared.config import SecuritySettings
    from shared.metrics import ServiceMetrics

    m = DatamanagerMetrics(ServiceMetrics("datamanager"))
    assert isinstance(m.service.registry, CollectorRegistry)
    a = Admission(InterestLimits(max_id_length=16), SecuritySettings(), verifier(), None, m)  # type: ignore[arg-type]
    now = utcnow().timestamp()

    def problem(msg: InterestUpdate, key: bytes = b"p1/n1") -> str | None:
        found = a.interest_problem(_rec(key, encode(msg)), msg, now)
        return None if found is None else found[0]

    assert problem(update()) is None
    assert problem(update(), key=b"p2/n1") == "key_mismatch"
    assert problem(update(), key=b"") == "key_mismatch"
    assert problem(update(portfolio_id="p 1"), key=b"p 1/n1") == "bad_id"
    assert problem(update(node_id="n/x"), key=b"p1/n/x") == "bad_id"
    assert problem(update(portfolio_id="p" * 17), key=b"p" * 17 + b"/n1") == "bad_id"
    assert problem(update(lease_s=0.001)) == "lease_out_of_range"
    assert problem(update(lease_s=float("nan"))) == "lease_out_of_range"
    assert problem(update(lease_s=None)) is None
    cmd = command(correlation_id="x" * 17)
    found = a.command_problem(_rec(b"datamanager", encode(cmd)), cmd, now)
    assert found is not None and found[0] == "bad_id"
