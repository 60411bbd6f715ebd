"""``livedata jobs``: list with next fires and the last outcome from Redis, check a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
import yaml

from services.ops.cli import main
from tests.helpers import write_config_dir


def test_jobs_check_reports_every_mistake_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "task_timer.yml"
    jobs = [
        {"name": "snap", "cron": "5 15 * * 1-5", "command": "bar_snapshot", "params": {"market": "XX"}},
        {"name": "typo", "cron": "5 15 * * 1-5", "command": "c", "calender": "CN"},
    ]
    path.write_text(yaml.safe_dump({"jobs": jobs}))
    assert main(["jobs", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"error: {path}: job snap: params.market: 'XX' is not a market (CN, HK, US)" in out
    assert f"error: {path}: job typo: calender: unknown key" in out
    good = {"name": "ok", "cron": "5 15 * * 1-5", "command": "c", "calendar": "CN"}
    path.write_text(yaml.safe_dump({"jobs": [good]}))
    assert main(["jobs", "check", str(path)]) == 0
    assert "OK, 1 jobs" in capsys.readouterr().out


def test_jobs_list_shows_next_fires_and_the_last_outcome(
    tmp_path: Path, redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    live = {"redis": {"url": redis_url}, "tasktimer": {"redis_prefix": redis_prefix}}
    jobs = {
        "jobs": [
            {
                "name": "hk_close",
                "cron": "15 16 * * 1-5",
                "timezone": "Asia/Hong_Kong",
                "command": "c",
                "calendar": "HK",
            }
        ]
    }
    d = write_config_dir(tmp_path, {"bootstrap_servers": "127.0.0.1:1"}, "cli", live, task_timer=jobs)
    client = redis.Redis.from_url(redis_url)
    try:
        record = {"outcome": "published", "instant": "2026-11-30T08:15:00+00:00", "replica": "r1", "lateness_s": 0.004}
        client.hset(f"{redis_prefix}:outcome", "hk_close", json.dumps(record))
        for argv in (["jobs", "--config-dir", str(d)], ["jobs", "list", "--config-dir", str(d)]):
            assert main(argv) == 0
            out = capsys.readouterr().out
            line = next(ln for ln in out.splitlines() if ln.startswith("hk_close"))
            assert "15 16 * * 1-5" in line and "Asia/Hong_Kong" in line and " HK " in line
            assert line.count(" 16:15") == 3  # the next three fires
            assert "published 2026-11-30T08:15:00+00:00 by r1" in line
    finally:
        client.delete(f"{redis_prefix}:outcome")
        client.close()


def test_jobs_list_shows_no_dec_25_for_us_and_hk_christmas_jobs(
    demo_config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's jobs plus Christmas jobs on the US and HK calendars: past the confirmed
    horizon the library's holidays are skipped, so no year lists a Dec 25."""
    path = demo_config_dir / "task_timer.yml"
    content = yaml.safe_load(path.read_text())
    for market, tz in (("US", "America/New_York"), ("HK", "Asia/Hong_Kong")):
        for name, cron in (("christmas", "0 10 25 12 *"), ("around_christmas", "0 10 24-26 12 *")):
            job = {"name": f"{market.lower()}_{name}", "cron": cron, "timezone": tz, "command": "status"}
            content["jobs"].append({**job, "calendar": market})
    path.write_text(yaml.safe_dump(content))
    assert main(["jobs", "list", "--config-dir", str(demo_config_dir), "--fires", "12"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln and not ln.startswith(("job ", "*", "("))}
    assert {"us_close_snapshot", "us_christmas", "hk_around_christmas"} <= set(lines)
    assert "-12-25 " not in out
    for market in ("us", "hk"):
        assert "(none: no trading-day instant within" in lines[f"{market}_christmas"]
        around = lines[f"{market}_around_christmas"]
        years = {int(w[:4]) for w in around.split() if w[:4].isdigit() and w[4:5] == "-"}
        assert len(years) >= 8 and "*" in around  # years ahead, estimated past the confirmed horizon
    assert "* estimated:" in out
