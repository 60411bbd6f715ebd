"""``livedata subscribe|unsubscribe --portfolio ID --node ID SYMBOL...``: announce interest
by hand, as the SDK does (an InterestUpdate add/remove keyed ``portfolio/node``)."""

from __future__ import annotations

from pathlib import Path

from services.ops.common import OK, USAGE, config_for, err, start_publisher
from shared.dto import InterestUpdate, UpdateType, utcnow
from shared.signing import sign, signer_from_config
from shared.symbols import normalize
from shared.topics import Topics


async def run_interest(
    config_dir: Path | None,
    update_type: UpdateType,
    portfolio: str,
    node: str,
    symbols: list[str],
    lease_s: float | None,
) -> int:
    try:
        canonical = tuple(normalize(s) for s in symbols)
    except ValueError as e:
        err(f"bad symbol: {e}")
        return USAGE
    config = config_for(config_dir)
    msg = InterestUpdate(
        portfolio_id=portfolio,
        node_id=node,
        symbols=canonical,
        update_type=update_type,
        timestamp=utcnow(),
        lease_s=lease_s,
    )
    msg = sign(signer_from_config(config), msg)  # security.sign
    pub = await start_publisher(config, "livedata-cli")
    try:
        await pub.publish(Topics(config.livedata.topics.prefix).interest_updates, msg, key=f"{portfolio}/{node}")
    finally:
        await pub.stop()
    lease = f", lease {lease_s:g}s" if lease_s else ", no lease (stays until removed)"
    print(f"{update_type} {portfolio}/{node}: {' '.join(canonical) or '(none)'}{lease}")
    return OK
