"""docker-compose.yml validates against the Compose Specification and agrees with the service:
settings, endpoints, the model fetch, Prometheus scraping and the Grafana dashboard's metrics.

The Compose Specification's JSON schema comes from the `check-jsonschema` wheel (dev extra), which
vendors compose-spec/compose-spec's schema/compose-spec.json; no network is needed.
"""

from __future__ import annotations

import copy
import json
import re
from importlib.resources import files

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import (
    REPO_ROOT,
    exported_metric_series,
    service_endpoints,
    settings_env_names,
    settings_from_env,
)

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
COMPOSE_DIR = REPO_ROOT / "deploy" / "compose"
SERVICE_PROFILES = {"tipo-gpu": "gpu", "tipo-cpu": "cpu"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_spec_errors(document: dict) -> list[str]:
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


def interpolate(value: str) -> str:
    """Compose's ${NAME:-default} with nothing set in the environment."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def service_environment(service: dict) -> dict[str, str]:
    return {name: interpolate(str(value)) for name, value in service["environment"].items()}


def test_compose_file_validates_against_the_compose_spec(compose):
    assert compose_spec_errors(compose) == []


def test_the_compose_spec_check_is_strict(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["tipo-gpu"]["gpu_count"] = 1
    assert compose_spec_errors(broken)
    broken = copy.deepcopy(compose)
    broken["services"]["tipo-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = "gpu"
    assert compose_spec_errors(broken)


def test_one_profile_for_gpu_one_that_runs_anywhere(compose):
    services = compose["services"]
    for name, profile in SERVICE_PROFILES.items():
        assert services[name]["profiles"] == [profile]
        assert services[name]["build"]["target"] == profile
        assert services[name]["image"].endswith(f"-{profile}")
    (device,) = services["tipo-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == 1
    assert "deploy" not in services["tipo-cpu"]
    # The fetch job and the monitoring run with either profile.
    for name in ("model-fetch", "prometheus", "grafana"):
        assert "profiles" not in services[name]


def test_services_match_the_settings_and_endpoints(compose):
    endpoints = service_endpoints()
    for name in SERVICE_PROFILES:
        service = compose["services"][name]
        env = service_environment(service)
        assert set(env) - settings_env_names() == set()
        settings = settings_from_env(env)
        assert settings.host == "0.0.0.0"
        assert [p.rsplit(":", 1)[1] for p in service["ports"]] == [str(settings.port)]
        assert all(p.startswith("127.0.0.1:") for p in service["ports"]), "published on localhost only"
        assert f"http://127.0.0.1:{settings.port}{endpoints['live']}" in " ".join(service["healthcheck"]["test"])


def test_model_is_fetched_once_into_a_named_volume(compose):
    services = compose["services"]
    fetch = services["model-fetch"]
    command = fetch["command"]
    assert command[:4] == ["python3", "-m", "model_store", "fetch"]
    destination = command[command.index("--dest") + 1]
    assert fetch["restart"] == "no"
    assert service_environment(fetch)["HF_HUB_OFFLINE"] == "0"
    assert "models:/models" in fetch["volumes"]
    assert "models" in compose["volumes"]
    for name in SERVICE_PROFILES:
        service = services[name]
        assert service["depends_on"]["model-fetch"]["condition"] == "service_completed_successfully"
        assert settings_from_env(service_environment(service)).model == destination
        assert "models:/models:ro" in service["volumes"]
        assert "HF_HUB_OFFLINE" not in service["environment"], "the image keeps the server offline"


def test_containers_are_locked_down(compose):
    for name in ("model-fetch", *SERVICE_PROFILES):
        service = compose["services"][name]
        assert service["read_only"] is True
        assert not service["user"].startswith("0")
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert any(t.startswith("/tmp") for t in service["tmpfs"]), "HOME=/tmp needs a writable /tmp"
    for name in SERVICE_PROFILES:
        assert compose["services"][name]["shm_size"]


def test_prometheus_scrapes_the_service(compose):
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tipo"]
    assert job["metrics_path"] == service_endpoints()["metrics"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    for name in SERVICE_PROFILES:
        service = compose["services"][name]
        assert host in service["networks"]["default"]["aliases"]
        assert port == str(settings_from_env(service_environment(service)).port)
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/compose/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_is_provisioned_with_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    binds = {}
    for mount in grafana["volumes"]:
        source, target = mount.split(":")[:2]
        if source.startswith("./"):
            assert (REPO_ROOT / source).exists(), source
            binds[target] = REPO_ROOT / source
    provisioning = binds["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "tipo.yml").read_text())["providers"]
    dashboards_dir = binds[provider["options"]["path"]]
    assert (dashboards_dir / "tipo-service.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/tipo-service.json"


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "tipo-service.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_queries_only_metrics_the_service_exports():
    exported = exported_metric_series()
    used = {name for expr in dashboard_expressions() for name in re.findall(r"\btipo_[a-z_]+\b", expr)}
    assert used and used - exported == set(), f"not exported by service/metrics.py: {sorted(used - exported)}"


def test_dashboard_covers_what_operators_watch():
    expressions = " ".join(dashboard_expressions())
    for needed in (
        "rate(tipo_requests_total",  # request rate
        "histogram_quantile(0.95, sum by (le) (rate(tipo_request_duration_seconds_bucket",  # latency
        "rate(tipo_completion_tokens_total",  # tokens/s
        "tipo_model_calls_per_request",  # model calls per request
        "tipo_requests_waiting",  # queue depth
        'status=~"5.."',  # errors
        "tipo_engine_errors_total",
    ):
        assert needed in expressions, needed
