"""Signed interest updates and control commands: who a message speaks for, beyond the ACLs.

Kafka ACLs say who may write a topic, not which portfolio a record speaks for, nor who
sent a command. With ``security.sign`` set, a producer signs each InterestUpdate and
ControlCommand: ``key_id`` names its key and ``sig`` is the lowercase hex
HMAC-SHA256, by that key's secret, of the message's CANONICAL BYTES:

    the message's JSON object as it is on the wire (its ``key_id`` included), without
    the ``sig`` key, encoded again by msgspec with every object's keys sorted and no
    whitespace (``msgspec.json.encode(obj, order="sorted")``).

The verifier computes them from the record's own bytes, so fields a newer producer adds
(an optional field keeps ``v``) are covered too, and two sides with different schema
versions agree. ``timestamp`` is inside the signature: a message stamped further than
``max_age_s`` from the time it is judged by is refused (``stale_signature``), and a
signature seen within that window is refused again (``replayed``; a bounded memory).

Keys are a mapping of id to secret (secure.yml ``signing_keys``); a verifier holding two
accepts either, so a key is rotated by adding the new one to the datamanager, moving the
signers to it, then removing the old one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping
from typing import TypeVar

import msgspec
from pydantic import SecretStr

from shared.config import AppConfig
from shared.dto import ControlCommand, InterestUpdate, encode

Signed = InterestUpdate | ControlCommand
S = TypeVar("S", InterestUpdate, ControlCommand)

SIG_FIELD = "sig"

# reasons a signed or unsigned message is refused (a closed set: they are metric labels)
UNSIGNED = "unsigned"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
STALE_SIGNATURE = "stale_signature"
REPLAYED = "replayed"
REASONS = (UNSIGNED, UNKNOWN_KEY, BAD_SIGNATURE, STALE_SIGNATURE, REPLAYED)

_generic = msgspec.json.Decoder()


def canonical_bytes(raw: bytes) -> bytes:
    """The bytes a signature covers: the JSON object ``raw`` without ``sig``, keys sorted.

    Raises ``msgspec.DecodeError`` if ``raw`` is not a JSON object."""
    obj = _generic.decode(raw)
    if not isinstance(obj, dict):
        raise msgspec.DecodeError("a signed message is a JSON object")
    obj.pop(SIG_FIELD, None)
    return msgspec.json.encode(obj, order="sorted")


def mac(secret: SecretStr | str, raw: bytes) -> str:
    """HMAC-SHA256 (hex) of ``raw``'s canonical bytes by ``secret``."""
    key = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    return hmac.new(key.encode(), canonical_bytes(raw), hashlib.sha256).hexdigest()


class Signer:
    """Signs messages with one key: ``sign(msg)`` returns the message with ``key_id`` and ``sig``."""

    def __init__(self, key_id: str, secret: SecretStr | str) -> None:
        self.key_id = key_id
        self._secret = secret if isinstance(secret, SecretStr) else SecretStr(secret)

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"

    def sign(self, message: S) -> S:
        unsigned = msgspec.structs.replace(message, key_id=self.key_id, sig=None)
        return msgspec.structs.replace(unsigned, sig=mac(self._secret, encode(unsigned)))


def sign(signer: Signer | None, message: S) -> S:
    """``message`` signed by ``signer``, or as it is without one."""
    return message if signer is None else signer.sign(message)


class Verifier:
    """Checks signatures against a set of keys, with a freshness window and replay memory.

    ``check(raw, msg, judged_at, required)`` returns None for a message to accept, or the
    reason (one of ``REASONS``) to refuse it. Unsigned messages pass unless ``required``;
    a message with a signature that does not verify never passes.
    """

    def __init__(self, keys: Mapping[str, SecretStr], max_age_s: float, memory: int) -> None:
        self._keys = dict(keys)
        self.max_age_s = max_age_s
        self._memory = memory
        self._seen: OrderedDict[str, float] = OrderedDict()  # sig -> message time, oldest first

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def check(self, raw: bytes, msg: Signed, judged_at: float, required: bool) -> str | None:
        if msg.sig is None and msg.key_id is None:
            return UNSIGNED if required else None
        if msg.sig is None or msg.key_id is None:
            return BAD_SIGNATURE
        secret = self._keys.get(msg.key_id)
        if secret is None:
            return UNKNOWN_KEY
        try:
            expected = mac(secret, raw)
        except msgspec.DecodeError:
            return BAD_SIGNATURE
        if not hmac.compare_digest(expected, msg.sig):
            return BAD_SIGNATURE
        self._forget(judged_at)
        stamped = msg.timestamp.timestamp()
        if abs(judged_at - stamped) > self.max_age_s:
            return STALE_SIGNATURE
        if msg.sig in self._seen:
            return REPLAYED
        self._seen[msg.sig] = stamped
        while len(self._seen) > self._memory:
            self._seen.popitem(last=False)
        return None

    def _forget(self, now: float) -> None:
        """Drop signatures whose messages are past the window (refused as stale anyway)."""
        horizon = now - self.max_age_s
        seen = self._seen
        while seen:
            sig, stamped = next(iter(seen.items()))
            if stamped >= horizon:
                return
            del seen[sig]

    @property
    def remembered(self) -> int:
        return len(self._seen)


def signer_from_config(config: AppConfig) -> Signer | None:
    """The signer ``security.sign`` names (its secret from secure.yml), or None."""
    key_id = config.livedata.security.sign
    if key_id is None:
        return None
    return Signer(key_id, config.signing_keys[key_id])  # load_config checked it is there


def verifier_from_config(config: AppConfig) -> Verifier:
    s = config.livedata.security
    return Verifier(config.signing_keys, s.max_age_s, s.replay_memory)


EXPLAINED = {
    UNSIGNED: "unsigned, and security.require_signed is on",
    UNKNOWN_KEY: "signed by a key id this datamanager does not hold (secure.yml signing_keys)",
    BAD_SIGNATURE: "signature does not verify (key_id and sig must both be set, over the canonical bytes)",
    STALE_SIGNATURE: "signed message stamped outside the freshness window (security.max_age_s)",
    REPLAYED: "signature already seen within the freshness window (a replay)",
}
"""What each refusal means, for a dead letter's reason (no secret, no signature value)."""
