"""The settings tree: a policy's config class is its settings group, set by HEALMESH_<GROUP>__<NAME>.
And the default gateway worker count from the CPUs (a cgroup quota included)."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from healmesh import settings as settings_module
from healmesh.lifecycle.airflow_tasks import parse_time_settings, rollout_settings
from healmesh.policies.breaker import BreakerConfig, CircuitBreaker, State
from healmesh.policies.canary import CanaryConfig
from healmesh.policies.chain import ChainConfig
from healmesh.policies.drift import DriftThresholds
from healmesh.policies.retry_budget import RetryBudget, RetryBudgetConfig
from healmesh.policies.sequential import JudgeConfig
from healmesh.settings import Settings, _cgroup_cpu_limit, available_cpus, get_settings
from healmesh.urls import local_address, local_redis_url, local_url


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def _fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_a_nested_env_var_sets_the_breaker_the_gateway_builds(monkeypatch):
    monkeypatch.setenv("HEALMESH_BREAKER__OPEN_WAIT_S", "7")
    monkeypatch.setenv("HEALMESH_BREAKER__CONSECUTIVE_FAILURES", "2")
    s = Settings()
    assert s.breaker.open_wait_s == 7 and s.breaker.consecutive_failures == 2
    clock = Clock()
    breaker = CircuitBreaker("up", s.breaker, clock=clock)
    for _ in range(2):
        permit = breaker.acquire()
        assert permit
        breaker.record_failure()
        permit.release()
    assert breaker.state is State.OPEN
    clock.t += 6.9
    assert breaker.state is State.OPEN  # the default (5 s) would have let it half-open
    clock.t += 0.1
    assert breaker.state is State.HALF_OPEN


def test_every_group_reads_its_env_vars(monkeypatch):
    monkeypatch.setenv("HEALMESH_RETRY_BUDGET__MIN_PER_WINDOW", "0")
    monkeypatch.setenv("HEALMESH_CANARY__STAGES", "[20, 100]")
    monkeypatch.setenv("HEALMESH_CANARY__MIN_QUALITY_LABELS", "300")  # could not be set before the tree
    monkeypatch.setenv("HEALMESH_CANARY__JUDGE__ALPHA", "0.01")  # a group in a group
    monkeypatch.setenv("HEALMESH_DRIFT__MIN_QUALITY_LABELS", "50")  # nor this one
    monkeypatch.setenv("HEALMESH_RETRAIN__GATE__MARGIN", "0.02")
    monkeypatch.setenv("HEALMESH_ROLLOUT__PROMOTE_RETRIES", "1")
    monkeypatch.setenv("HEALMESH_FEATURE_LOG__FLUSH_BATCH", "8")
    monkeypatch.setenv("HEALMESH_CHAIN__DEADLINE_S", "0.3")
    s = Settings()
    assert s.chain.deadline_s == 0.3 and s.chain.attempt_timeout_s == ChainConfig().attempt_timeout_s
    assert s.retry_budget.min_per_window == 0
    assert s.canary.stages == (20, 100) and s.canary.min_quality_labels == 300
    assert s.canary.judge.alpha == 0.01 and s.canary.judge.beta == JudgeConfig().beta
    assert s.drift.min_quality_labels == 50
    assert (s.retrain.gate.margin, s.rollout.promote_retries, s.feature_log.flush_batch) == (0.02, 1, 8)
    budget = RetryBudget(s.retry_budget, clock=Clock())
    assert budget.config.min_per_window == 0 and not budget.try_spend()  # no floor: no retry without traffic


def test_the_defaults_are_the_policies_own():
    s = Settings()
    assert type(s.breaker) is BreakerConfig and s.breaker == BreakerConfig()
    assert type(s.retry_budget) is RetryBudgetConfig and s.retry_budget == RetryBudgetConfig()
    assert type(s.canary) is CanaryConfig and s.canary == CanaryConfig()
    assert type(s.drift) is DriftThresholds and s.drift == DriftThresholds()
    assert type(s.chain) is ChainConfig and s.chain == ChainConfig()


def test_an_invalid_value_names_the_field(monkeypatch):
    monkeypatch.setenv("HEALMESH_BREAKER__OPEN_WAIT_S", "0")
    with pytest.raises(ValidationError, match=r"breaker\n.*open_wait_s must be > 0, but was 0\.0"):
        Settings()
    monkeypatch.setenv("HEALMESH_BREAKER__OPEN_WAIT_S", "soon")
    with pytest.raises(ValidationError, match=r"breaker\.open_wait_s\n.*valid number"):
        Settings()
    monkeypatch.delenv("HEALMESH_BREAKER__OPEN_WAIT_S")
    monkeypatch.setenv("HEALMESH_CANARY__STAGES", "[50, 10]")
    with pytest.raises(ValidationError, match=r"canary\n.*stages must rise strictly"):
        Settings()


def test_the_fixed_length_canary_settings_are_refused_with_the_judges_names(monkeypatch):
    monkeypatch.setenv("HEALMESH_CANARY__DEADLINE_S", "180")
    with pytest.raises(ValidationError, match="HEALMESH_CANARY__DEADLINE_S -> HEALMESH_CANARY__JUDGE__MAX_STAGE_S"):
        Settings()


def test_a_misspelt_group_setting_is_refused_not_ignored(monkeypatch):
    monkeypatch.setenv("HEALMESH_BREAKER__OPEN_WAIT", "7")
    with pytest.raises(ValidationError, match=r"breaker\.open_wait\n.*Extra inputs are not permitted"):
        Settings()


def test_the_policy_configs_are_frozen():
    with pytest.raises(ValidationError, match="frozen"):
        Settings().breaker.open_wait_s = 1.0  # type: ignore[misc]


def test_a_dag_parse_falls_back_to_the_defaults_where_a_task_fails(monkeypatch):
    monkeypatch.setenv("HEALMESH_ROLLOUT__PROMOTE_RETRIES", "-1")
    assert parse_time_settings().rollout.promote_retries == 3
    assert rollout_settings()["stages"] == CanaryConfig().stages
    with pytest.raises(ValidationError, match=r"rollout\.promote_retries"):
        get_settings()


def test_the_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s = Settings(home=tmp_path, mlflow_port=5123)
    assert s.configured_tracking_uri is None
    assert s.tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert s.local_mlflow_uri == "http://127.0.0.1:5123"
    s = Settings(home=tmp_path, mlflow_tracking_uri="http://registry:5000")
    assert s.tracking_uri == s.local_mlflow_uri == "http://registry:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://other:5000")  # read when asked: it wins
    assert s.tracking_uri == s.local_mlflow_uri == "http://other:5000"


def test_local_addresses():
    assert local_url(8000) == "http://127.0.0.1:8000"
    assert local_url(8001, "/readyz") == "http://127.0.0.1:8001/readyz"
    assert local_address(9090) == "127.0.0.1:9090"
    assert local_redis_url(6380) == "redis://127.0.0.1:6380/0"
    s = Settings(gateway_port=8100)
    assert s.gateway_api_url == "http://127.0.0.1:8100"
    assert Settings(gateway_url="http://gw:8000").gateway_api_url == "http://gw:8000"


def test_an_old_flat_env_name_is_refused_with_its_new_name(monkeypatch):
    monkeypatch.setenv("HEALMESH_BREAKER_OPEN_WAIT_S", "7")
    monkeypatch.setenv("HEALMESH_RETRY_BUDGET_MIN", "0")
    with pytest.raises(ValidationError, match="HEALMESH_BREAKER_OPEN_WAIT_S -> HEALMESH_BREAKER__OPEN_WAIT_S") as err:
        Settings()
    assert "HEALMESH_RETRY_BUDGET_MIN -> HEALMESH_RETRY_BUDGET__MIN_PER_WINDOW" in str(err.value)
    monkeypatch.delenv("HEALMESH_BREAKER_OPEN_WAIT_S")
    monkeypatch.delenv("HEALMESH_RETRY_BUDGET_MIN")
    monkeypatch.setenv("HEALMESH_DEADLINE_MS", "300")  # moved and now in seconds: the message says so
    with pytest.raises(ValidationError, match=r"HEALMESH_DEADLINE_MS -> HEALMESH_CHAIN__DEADLINE_S \(seconds\)"):
        Settings()
    monkeypatch.delenv("HEALMESH_DEADLINE_MS")
    monkeypatch.setenv("HEALMESH_DRIFT_SCHEDULE", "@daily")  # a flat field whose name starts like a group's
    assert Settings().drift_schedule == "@daily"


# --- the default worker count ----------------------------------------------------------------------

@pytest.mark.parametrize("cpus,workers", [(1, 1), (2, 2), (3, 2), (64, 2)])
def test_two_gateway_workers_from_two_cpus_on(monkeypatch, cpus, workers):
    monkeypatch.delenv("HEALMESH_GATEWAY_WORKERS", raising=False)
    monkeypatch.setattr(settings_module, "available_cpus", lambda: cpus)
    assert Settings().gateway_workers == workers


@pytest.mark.parametrize("cpus", [1, 2, 8])
@pytest.mark.parametrize("explicit", ["1", "3"])
def test_an_explicit_worker_count_wins(monkeypatch, cpus, explicit):
    monkeypatch.setenv("HEALMESH_GATEWAY_WORKERS", explicit)
    monkeypatch.setattr(settings_module, "available_cpus", lambda: cpus)
    assert Settings().gateway_workers == int(explicit)


def test_a_cpu_quota_caps_the_cpus(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(32)), raising=False)
    monkeypatch.setattr(settings_module, "_cgroup_cpu_limit", lambda: 1)
    assert available_cpus() == 1
    monkeypatch.setattr(settings_module, "_cgroup_cpu_limit", lambda: None)
    assert available_cpus() == 32


@pytest.mark.parametrize("files,limit", [
    ({"cpu.max": "150000 100000\n"}, 1),  # 1.5 CPUs: one whole
    ({"cpu.max": "200000 100000\n"}, 2),
    ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU still runs one worker
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
    ({"cpu.max": "garbage"}, None),
])
def test_cgroup_cpu_quota(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _cgroup_cpu_limit(tmp_path) == limit
