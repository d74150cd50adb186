"""Alerts that reach someone: a Prometheus and an Alertmanager for the local mesh.

Prometheus scrapes the gateway and the three scorers and evaluates deploy/prometheus/rules.yml;
the Alertmanager it alerts posts every alert to the gateway's ``POST /api/v1/alerts`` with the
alerts token, and the gateway records each as a lifecycle event (the status page shows it).

- ``render_prometheus_config``: deploy/prometheus/prometheus.yml itself (its jobs, labels,
  5 s intervals, alerting block) with the ports taken from settings and the rule files made
  absolute. With the default ports it is that file, rule path aside (a unit test holds it so).
- ``render_alertmanager_config``: one route, every alert to the gateway's webhook, grouped per
  alert, short waits for local use, the bearer token read from a file (never in the config).
- ``write_configs``: both into ``$HEALMESH_HOME/alerting/`` (0700), each created 0600.
- ``alerting_servers``: the two ``ServerProcess`` es, ready to ``launch()``, and
  ``gateway_env``: what the gateway's environment needs so that it accepts the Alertmanager.

Nothing here starts anything on its own; `healmesh up` (or its supervisor) calls these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from healmesh.credentials import alerts_token, alerts_token_file, private_dir, write_secret
from healmesh.errors import ConfigError
from healmesh.ops import procs
from healmesh.settings import Settings
from healmesh.urls import local_address, local_url

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
WEBHOOK_PATH = "/api/v1/alerts"
RECEIVER = "healmesh-gateway"
# alerts per notification: far below what the gateway's body limit for the route holds
MAX_ALERTS = 64
# Alertmanager timing for a local mesh: a new alert is posted within 5 s of reaching it; a
# group's changes within 10 s; a firing alert is re-posted hourly (the gateway records it once)
GROUP_WAIT, GROUP_INTERVAL, REPEAT_INTERVAL = "5s", "10s", "1h"

# the `component` label of each target in prometheus.yml -> the setting that gives its port
COMPONENT_PORTS = {"gateway": "gateway_port", "xgboost_scorer": "xgb_port", "torch_scorer": "torch_port",
                   "fallback_scorer": "fallback_port"}


def prometheus_config(settings: Settings, template: Path = PROMETHEUS_YML) -> dict[str, Any]:
    """``template`` (deploy/prometheus/prometheus.yml) with each target on the port its
    component has in ``settings``, the Alertmanager on ``alertmanager_port`` and rule files
    absolute (the rendered file lives elsewhere)."""
    config = yaml.safe_load(template.read_text())
    config["rule_files"] = [str((template.parent / rule).resolve()) for rule in config.get("rule_files", [])]
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            component = (static.get("labels") or {}).get("component")
            if component not in COMPONENT_PORTS:
                raise ConfigError(f"{template}: job {job['job_name']}: a target without a known component label")
            static["targets"] = [local_address(getattr(settings, COMPONENT_PORTS[component]))]
    managers = config.get("alerting", {}).get("alertmanagers", [])
    if len(managers) != 1:
        raise ConfigError(f"{template}: expected one alertmanagers entry, found {len(managers)}")
    managers[0]["static_configs"] = [{"targets": [local_address(settings.alertmanager_port)]}]
    return config


def render_prometheus_config(settings: Settings, template: Path = PROMETHEUS_YML) -> str:
    return yaml.safe_dump(prometheus_config(settings, template), sort_keys=False)


def webhook_url(settings: Settings) -> str:
    return local_url(settings.gateway_port, WEBHOOK_PATH)


def alertmanager_config(settings: Settings, token_file: Path) -> dict[str, Any]:
    """Every alert to the gateway's webhook, authenticated with the token in ``token_file``."""
    return {
        "route": {
            "receiver": RECEIVER,
            "group_by": ["..."],  # one group per alert: each is posted on its own
            "group_wait": GROUP_WAIT, "group_interval": GROUP_INTERVAL, "repeat_interval": REPEAT_INTERVAL,
        },
        "receivers": [{
            "name": RECEIVER,
            "webhook_configs": [{
                "url": webhook_url(settings),
                "send_resolved": True,
                "max_alerts": MAX_ALERTS,
                "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}},
            }],
        }],
    }


def render_alertmanager_config(settings: Settings, token_file: Path) -> str:
    return yaml.safe_dump(alertmanager_config(settings, token_file), sort_keys=False)


@dataclass(frozen=True)
class AlertingFiles:
    directory: Path
    prometheus: Path
    alertmanager: Path
    token_file: Path


def alerting_dir(settings: Settings) -> Path:
    return settings.home / "alerting"


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)  # created afresh, 0600 from the start
    write_secret(path, text)


def write_configs(settings: Settings) -> AlertingFiles:
    """Both configs rendered into ``$HEALMESH_HOME/alerting/`` (0700; each file 0600), and the
    alerts token file the Alertmanager's config names (made when absent)."""
    directory = private_dir(alerting_dir(settings))
    token_file = alerts_token_file(settings)
    files = AlertingFiles(directory=directory, prometheus=directory / "prometheus.yml",
                          alertmanager=directory / "alertmanager.yml", token_file=token_file)
    _write_private(files.prometheus, render_prometheus_config(settings))
    _write_private(files.alertmanager, render_alertmanager_config(settings, token_file))
    return files


def alerting_servers(settings: Settings) -> list[procs.ServerProcess]:
    """The Alertmanager and the Prometheus of the local mesh (configs written now), on
    ``alertmanager_port`` and ``prometheus_port``, state under ``$HEALMESH_HOME/alerting/``,
    logs in ``$HEALMESH_HOME/logs/``. Not started: ``launch()`` each (in this order, so that the
    first alerts find their Alertmanager; Prometheus re-sends anyway)."""
    files = write_configs(settings)
    logs = settings.home / "logs"
    return [procs.alertmanager_server(settings.alertmanager_port, files.directory / "alertmanager", logs,
                                      files.alertmanager),
            procs.prometheus_server(settings.prometheus_port, files.directory / "prometheus", logs,
                                    files.prometheus)]


def gateway_env(settings: Settings) -> dict[str, str]:
    """What the gateway's environment needs so that it takes the Alertmanager's posts."""
    return {"HEALMESH_ALERTS_TOKEN": alerts_token(settings)}
