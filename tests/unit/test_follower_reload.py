"""The follower's reload: which keys need a restart, and what a reload swaps in or keeps."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from smtpplus_milter.config import Config, ConfigError
from smtpplus_milter.config.loader import ConfigProblem
from smtpplus_milter.config.values import HostPort, Tracking
from smtpplus_milter.core.suppression import Policy
from smtpplus_milter.observe.metrics import FollowerMetrics
from smtpplus_milter.services.follower import Follower, FollowerService, Reloader, Tuning, restart_keys
from tests.support.builders import config_with
from tests.support.observe import events

RUNNING = Tracking(
    store="sqlite:////var/lib/smtpplus/tracking.db",
    node="relay-1",
    maillog=Path("/var/log/postfix.log"),
    retention_days=90,
    metrics_listen=HostPort("127.0.0.1", 9465),
    spool_dir=Path("/var/lib/smtpplus/tracking-spool"),
    spool_max_bytes=256 << 20,
)


@pytest.mark.parametrize(
    ("new", "keys"),
    [
        pytest.param(RUNNING, (), id="unchanged"),
        pytest.param(replace(RUNNING, retention_days=30), (), id="retention-applies-live"),
        pytest.param(replace(RUNNING, spool_max_bytes=1 << 20), (), id="spool-bound-is-the-milters"),
        pytest.param(replace(RUNNING, store="postgresql://smtpplus@db/track"), ("tracking.store",), id="store"),
        pytest.param(replace(RUNNING, node="relay-2"), ("tracking.node",), id="node"),
        pytest.param(replace(RUNNING, maillog=Path("/var/log/mail.log")), ("tracking.maillog",), id="maillog"),
        pytest.param(replace(RUNNING, spool_dir=Path("/srv/spool")), ("tracking.spool_dir",), id="spool-dir"),
        pytest.param(replace(RUNNING, metrics_listen=None), ("tracking.metrics_listen",), id="metrics-off"),
        pytest.param(
            replace(RUNNING, node="relay-2", metrics_listen=HostPort("127.0.0.1", 9466)),
            ("tracking.node", "tracking.metrics_listen"),
            id="two-keys-in-a-fixed-order",
        ),
        pytest.param(
            None,
            (
                "tracking.store",
                "tracking.node",
                "tracking.maillog",
                "tracking.spool_dir",
                "tracking.metrics_listen",
            ),
            id="section-gone",
        ),
    ],
)
def test_which_keys_need_a_restart(new: Tracking | None, keys: tuple[str, ...]) -> None:
    assert restart_keys(RUNNING, new) == keys


# -- the reloader, with the loading and the tuning given -------------------------------------------


def _config(tmp_path: Path, **tracking: Any) -> Config:
    section = {"store": f"sqlite:///{tmp_path}/t.db", "node": "relay-1", "metrics_listen": None, **tracking}
    return config_with(tmp_path, settings={"tracking": section})


def _tune(config: Config) -> Tuning:
    return Tuning(config.bounces.policy, retention_days=config.tracking.retention_days if config.tracking else None)


def _follower(config: Config) -> Follower:
    assert config.tracking is not None
    first = _tune(config)
    return Follower(
        config.tracking.store,
        config.tracking.node,
        config.tracking.maillog,
        FollowerMetrics(),
        policy=first.policy,
        retention_days=first.retention_days,
    )


def _loads(*results: Config | ConfigError) -> Any:
    queue = list(results)

    def load(path: Path) -> Config:
        result = queue.pop(0)
        if isinstance(result, ConfigError):
            raise result
        return result

    return load


def _problem(path: Path) -> ConfigError:
    return ConfigError([ConfigProblem(path, ("bounces", "suppress_hard_days"), 3, "must be at least 1")])


def test_a_valid_config_swaps_the_policy_and_says_so(tmp_path: Path, logs: Sequence[MutableMapping[str, Any]]) -> None:
    old = _config(tmp_path)
    new = replace(old, bounces=replace(old.bounces, suppress_hard_days=30, soft_limit=2))
    follower = _follower(old)
    assert Reloader(follower, old, _loads(new), _tune)()
    assert follower.tuning.policy == Policy(hard_days=30, soft_limit=2)
    (said,) = events(logs, "config_reloaded")
    assert (said["suppress_hard_days"], said["soft_limit"]) == (30, 2)
    assert events(logs, "config_reload_needs_restart") == []


def test_a_config_that_does_not_validate_keeps_the_old_one(
    tmp_path: Path, logs: Sequence[MutableMapping[str, Any]]
) -> None:
    old = _config(tmp_path)
    follower = _follower(old)
    before = follower.tuning
    assert not Reloader(follower, old, _loads(_problem(old.path)), _tune)()
    assert follower.tuning is before
    (failed,) = events(logs, "config_reload_failed")
    assert failed["kept"] == "previous config"
    assert "bounces.suppress_hard_days: must be at least 1" in failed["problems"][0]
    assert events(logs, "config_reloaded") == []


def test_a_config_without_tracking_is_refused(tmp_path: Path, logs: Sequence[MutableMapping[str, Any]]) -> None:
    old = _config(tmp_path)
    follower = _follower(old)
    before = follower.tuning
    assert not Reloader(follower, old, _loads(replace(old, tracking=None)), _tune)()
    assert follower.tuning is before
    (failed,) = events(logs, "config_reload_failed")
    assert "tracking: the section is gone" in failed["problems"][0]


def test_a_restart_key_is_named_each_time_and_the_rest_applies(
    tmp_path: Path, logs: Sequence[MutableMapping[str, Any]]
) -> None:
    old = _config(tmp_path)
    assert old.tracking is not None
    moved = replace(old.tracking, node="relay-2", retention_days=7)
    new = replace(old, tracking=moved, bounces=replace(old.bounces, suppress_hard_days=10))
    follower = _follower(old)
    reloader = Reloader(follower, old, _loads(new, new), _tune)
    assert reloader() and reloader()
    assert follower.node == "relay-1"  # fixed at start
    assert follower.tuning == Tuning(replace(old.bounces.policy, hard_days=10), retention_days=7)
    # Compared with what runs, not with the last file read: the second reload names it again.
    warned = events(logs, "config_reload_needs_restart")
    assert [w["keys"] for w in warned] == [["tracking.node"], ["tracking.node"]]
    assert "restart the follower to apply" in warned[0]["detail"]


def test_a_reload_that_raises_keeps_the_service_and_the_old_settings(
    tmp_path: Path, logs: Sequence[MutableMapping[str, Any]]
) -> None:
    old = _config(tmp_path)
    follower = _follower(old)
    before = follower.tuning

    def broken_tune(config: Config) -> Tuning:
        raise RuntimeError("boom")

    FollowerService(follower, {}, reload=Reloader(follower, old, _loads(old), broken_tune)).reload()
    assert follower.tuning is before
    assert [e["kept"] for e in events(logs, "config_reload_failed")] == ["previous config"]


def test_without_a_reloader_sighup_is_ignored(tmp_path: Path, logs: Sequence[MutableMapping[str, Any]]) -> None:
    follower = _follower(_config(tmp_path))
    FollowerService(follower, {}).reload()
    assert len(events(logs, "reload_ignored")) == 1
