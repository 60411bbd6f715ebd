"""Malformed store URLs: every error names the setting and never repeats the value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.datamanager.barstore import ClickHouseBars
from shared.config import ConfigError, load_config
from shared.coordination import redis_client
from shared.store_urls import StoreURLError

PW = "s3cretPW-q7"
MALFORMED = {
    "no scheme": "{user}:" + PW + "@127.0.0.1:{port}/0",
    "bad port": "{scheme}://{user}:" + PW + "@127.0.0.1:9x00/0",
    "password where the port goes": "{scheme}://{user}:" + PW + "/127.0.0.1",
    "port out of range": "{scheme}://{user}:" + PW + "@127.0.0.1:99999/0",
    "stray bracket": "{scheme}://{user}:" + PW + "@[127.0.0.1:{port}/0",
    "stray space": "{scheme}://{user}:" + PW + " @127.0.0.1:{port}/0",
    "wrong scheme": "http://{user}:" + PW + "@127.0.0.1:{port}/0",
    "no host": "{scheme}://{user}:" + PW + "@:{port}/0",
}
STORES = {"redis": ("redis", "", 6379), "clickhouse": ("clickhouse", "default", 9000)}


def _url(store: str, form: str) -> str:
    scheme, user, port = STORES[store]
    return MALFORMED[form].format(scheme=scheme, user=user, port=port)


@pytest.mark.parametrize("form", MALFORMED)
@pytest.mark.parametrize("store", STORES)
def test_load_config_names_the_key_not_the_url(tmp_path: Path, store: str, form: str) -> None:
    (tmp_path / "livedata.yml").write_text(yaml.safe_dump({store: {"url": _url(store, form)}}))
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path, env={})
    assert f"{store}.url" in str(e.value) and PW not in str(e.value)


@pytest.mark.parametrize("form", MALFORMED)
def test_the_clients_refuse_without_repeating_it(form: str) -> None:
    with pytest.raises(StoreURLError) as e:
        redis_client(_url("redis", form))
    assert "redis.url" in str(e.value) and PW not in str(e.value) and PW not in repr(e.value.__context__ or "")
    with pytest.raises(StoreURLError) as e:
        ClickHouseBars(_url("clickhouse", form), "ginkgo")
    assert "clickhouse.url" in str(e.value) and PW not in str(e.value)
