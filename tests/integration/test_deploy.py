"""The container deployment, checked without Docker: compose files, the Dockerfile,
Prometheus and Grafana provisioning against the real CLI, config and metric names."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel

import shared.observability as observability
from services.cli import build_parser
from shared.config import Config, load_config
from tests.helpers import REPO

ROOT = REPO
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "services" / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD = GRAFANA / "dashboards" / "microzero.json"
DEPLOY_DOC = ROOT / "docs" / "DEPLOY.md"

# Values for the variables compose interpolates, as an operator would set them.
TEST_ENV = {
    "API_TOKEN": "test-token",
    "REDIS_PASSWORD": "redis-pw",
    "POSTGRES_PASSWORD": "pg-pw",
    "GRAFANA_ADMIN_PASSWORD": "grafana-pw",
}
SECRETS = ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")


# ---------------------------------------------------------------------------- helpers


def _load_yaml(path: Path) -> dict:
    with path.open() as f:
        return yaml.safe_load(f)  # resolves anchors and `<<` merge keys like compose does


def _merge(base, override):
    """Compose's merge of an override file: mappings merge recursively, the rest is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` (and ``-``/``?`` forms)."""

    def sub(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if present:
            return env[name]
        if op in ("-", ":-"):
            return arg
        if op in ("?", ":?"):
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return ""

    return _VAR.sub(sub, value).replace("$$", "$")


def _variables(text: str) -> set[str]:
    return {m.group(1) for m in _VAR.finditer(text)}


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: _interpolate(str(value), TEST_ENV) for key, value in env.items()}


def _has_healthcheck(service: dict) -> bool:
    check = service.get("healthcheck")
    return bool(check) and not check.get("disable", False) and check.get("test") not in (None, ["NONE"])


def _app_services(compose: dict) -> dict[str, dict]:
    """Services run from the microzero image (built from services/Dockerfile)."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def _long_running(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in _app_services(compose).items() if str(svc.get("restart")) != "no"}


def _flag(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def _metrics_port(command: list[str]) -> tuple[int, str]:
    """(port, path) a service serves its Prometheus metrics on, read from its command."""
    if command[0] == "api":
        return int(_flag(command, "--port") or 8000), "/metrics"
    port = _flag(command, "--metrics-port")
    assert port is not None, f"`microzero {' '.join(command)}` should pin --metrics-port for Prometheus"
    return int(port), "/metrics"


def _mount_targets(service: dict) -> list[str]:
    targets = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            targets.append(volume["target"])
        else:
            targets.append(volume.split(":")[1])
    return targets


@lru_cache(maxsize=1)
def _parser():
    return build_parser()


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    """Every panel that shows data: rows (and the panels of collapsed rows) unfolded."""
    found = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def _exposed_series() -> dict[str, set[str]]:
    """Metric family -> the series names Prometheus stores for it (suffixes included)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    series: dict[str, set[str]] = {}
    for obj in vars(observability).values():
        if isinstance(obj, MetricWrapperBase):
            for family in obj.describe():
                series[family.name] = {family.name + s for s in suffixes.get(family.type, ("",))}
    return series


_METRIC = re.compile(r"\bmicrozero_[a-z0-9_]+")


def _dashboard_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels(_dashboard()) for t in p.get("targets", []) if "expr" in t]


BASE = _load_yaml(COMPOSE)
MERGED_GPU = _merge(BASE, _load_yaml(COMPOSE_GPU))
COMMANDS = [("cpu", name, svc["command"]) for name, svc in _app_services(BASE).items()] + [
    ("gpu", name, svc["command"]) for name, svc in _app_services(MERGED_GPU).items()
]


# ---------------------------------------------------------------------------- compose


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_specification(path: Path) -> None:
    exe = Path(sys.executable).parent / "check-jsonschema"
    assert exe.exists(), f"{exe} missing: install the test extra (pip install -e '.[test]')"
    result = subprocess.run(
        [str(exe), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("variant", "service", "command"), COMMANDS, ids=[f"{v}-{s}" for v, s, _ in COMMANDS])
def test_service_command_is_a_real_microzero_subcommand(variant, service, command, capsys) -> None:
    assert isinstance(command, list) and all(isinstance(a, str) for a in command), "use the exec (list) form"
    try:
        args = _parser().parse_args(command)
    except SystemExit:
        args = None
    if args is None:
        pytest.fail(
            f"{variant} compose service {service!r}: `microzero {' '.join(command)}` is rejected by "
            f"services.cli.build_parser() (sub-command not wired into its COMMANDS, or a bad flag):\n"
            + capsys.readouterr().err
        )
    assert args.command == command[0]
    assert callable(getattr(args, "func", None))


def test_the_one_shot_data_job_imports_the_sample() -> None:
    data = BASE["services"]["data"]
    assert data["command"] == ["data", "sample"]
    assert str(data["restart"]) == "no"


def test_collectors_are_scaled_without_fixed_names_or_host_ports() -> None:
    collector = BASE["services"]["collector"]
    assert collector["deploy"]["replicas"] >= 2
    assert "container_name" not in collector, "a fixed container_name prevents replicas"
    assert "ports" not in collector, "a published host port prevents replicas"
    assert MERGED_GPU["services"]["collector"]["deploy"]["replicas"] >= 2


@pytest.mark.parametrize("compose", [BASE, MERGED_GPU], ids=["cpu", "gpu"])
def test_depends_on_names_existing_services_that_can_satisfy_the_condition(compose: dict) -> None:
    services = compose["services"]
    for name, svc in services.items():
        depends = svc.get("depends_on", {})
        if isinstance(depends, list):
            depends = {dep: {"condition": "service_started"} for dep in depends}
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert _has_healthcheck(services[dep]), f"{name} waits for {dep} to be healthy; it has no healthcheck"
            elif condition == "service_completed_successfully":
                assert str(services[dep].get("restart", "no")) == "no", f"{dep} is awaited to exit, so must not restart"
            else:
                assert condition == "service_started", condition


def test_every_long_running_app_service_has_a_healthcheck_on_its_own_port() -> None:
    for name, svc in _long_running(BASE).items():
        assert _has_healthcheck(svc), name
        test = " ".join(svc["healthcheck"]["test"])
        port, path = _metrics_port(svc["command"])
        probe = "/livez" if name == "api" else path
        assert f"127.0.0.1:{port}{probe}" in test, f"{name}'s healthcheck should probe port {port}{probe}: {test}"


def test_app_services_share_one_image_settings_and_volumes() -> None:
    apps = _app_services(BASE)
    assert {"data", "collector", "trainer", "validator", "api"} <= set(apps)
    assert len({svc["image"] for svc in apps.values()}) == 1
    for name, svc in apps.items():
        assert svc["build"]["dockerfile"] == "services/Dockerfile", name
        assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
    for name in ("redis", "postgres"):
        assert "build" not in BASE["services"][name] and _has_healthcheck(BASE["services"][name])


@pytest.mark.parametrize("service", sorted(_app_services(BASE)))
def test_app_environment_is_a_valid_config_pointing_at_the_compose_services(service, monkeypatch) -> None:
    svc = BASE["services"][service]
    env = _env(svc)
    # Every MZ_* key names a real config field (a typo would be silently ignored).
    for key in (k for k in env if k.startswith("MZ_")):
        model: type[BaseModel] = Config
        parts = key[len("MZ_") :].lower().split("__")
        for i, part in enumerate(parts):
            assert part in model.model_fields, f"{key}: no config field {'.'.join(parts[: i + 1])}"
            annotation = model.model_fields[part].annotation
            if i < len(parts) - 1:
                assert isinstance(annotation, type) and issubclass(annotation, BaseModel), key
                model = annotation
    for key in [k for k in os.environ if k.startswith("MZ_")] + ["REDIS_URL"]:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = load_config(None)
    pipeline = config.pipeline

    redis = urlsplit(env["REDIS_URL"])
    assert env["REDIS_URL"] == pipeline.redis_url
    assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)
    assert redis.password == TEST_ENV["REDIS_PASSWORD"]
    assert _env(BASE["services"]["redis"])["REDISCLI_AUTH"] == redis.password

    db = urlsplit(pipeline.database_url)
    postgres_env = _env(BASE["services"]["postgres"])
    assert db.scheme.startswith("postgresql") and (db.hostname, db.port) == ("postgres", 5432)
    assert (db.username, db.password, db.path.lstrip("/")) == (
        postgres_env["POSTGRES_USER"],
        postgres_env["POSTGRES_PASSWORD"],
        postgres_env["POSTGRES_DB"],
    )
    assert pipeline.api_token == TEST_ENV["API_TOKEN"]

    # State lives on named volumes shared by the services, not in the container layer.
    mounts = _mount_targets(svc)
    for path in (config.data.db_path, pipeline.checkpoints_dir, pipeline.best_dir):
        assert path.is_absolute() and any(path.is_relative_to(m) for m in mounts), f"{service}: {path} not on a volume"
    named = set(BASE["volumes"])
    for volume in svc["volumes"]:
        assert volume.split(":")[0] in named, f"{service}: {volume} should be a named volume"


def test_an_unset_api_token_disables_promotion_rather_than_allowing_an_empty_one(monkeypatch) -> None:
    unset = {k: v for k, v in TEST_ENV.items() if k != "API_TOKEN"}
    env = {k: _interpolate(str(v), unset) for k, v in BASE["services"]["api"]["environment"].items()}
    for key in [k for k in os.environ if k.startswith("MZ_")]:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not load_config(None).pipeline.api_token  # the API answers 403 to promotion then


def test_gpu_override_reserves_gpus_and_builds_one_cuda_image() -> None:
    services = MERGED_GPU["services"]
    for name in ("collector", "trainer"):
        svc = services[name]
        assert _flag(svc["command"], "--device") == "cuda", name
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
    for name in ("validator", "api"):
        assert _flag(services[name]["command"], "--device") in (None, "cpu")
    apps = _app_services(MERGED_GPU)
    # Every service of the GPU stack runs the same CUDA image, tagged apart from the CPU one.
    assert len({svc["image"] for svc in apps.values()}) == 1
    assert next(iter(apps.values()))["image"] != BASE["services"]["api"]["image"]
    assert {svc["build"].get("args", {}).get("TORCH_INDEX") for svc in apps.values()} == {""}
    assert all(svc["build"]["dockerfile"] == "services/Dockerfile" for svc in apps.values())


# ---------------------------------------------------------------------------- safe defaults


def test_secrets_are_required_and_listed_in_env_example() -> None:
    text = COMPOSE.read_text()
    for secret in SECRETS:
        uses = re.findall(r"\$\{" + secret + r"(:?[-?]?)", text)
        assert uses and set(uses) == {":?"}, f"${{{secret}}} should always be required (${{{secret}:?...}}): {uses}"
    example = dict(
        line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if line and line[0] != "#"
    )
    missing = (_variables(text) | _variables(COMPOSE_GPU.read_text())) - set(example)
    assert not missing, f".env.example does not list {missing}"
    assert all(not example[s] for s in SECRETS), "no default password in .env.example"


def test_ports_are_published_on_localhost_unless_told_otherwise() -> None:
    for name, svc in BASE["services"].items():
        for port in svc.get("ports", []):
            assert port.startswith("${MZ_BIND:-127.0.0.1}:"), f"{name}: {port}"
            assert _interpolate(port, {}).startswith("127.0.0.1:")


def test_grafana_has_no_anonymous_access() -> None:
    assert _env(BASE["services"]["grafana"])["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_no_password_in_any_process_arguments() -> None:
    for name, svc in BASE["services"].items():
        for key in ("command", "entrypoint"):
            value = svc.get(key) or []
            args = " ".join(_interpolate(a, TEST_ENV) for a in ([value] if isinstance(value, str) else value))
            for secret in SECRETS:
                assert TEST_ENV[secret] not in args, f"{name}'s {key} carries ${secret}"
    redis = BASE["services"]["redis"]
    assert "requirepass %s" in redis["command"][-1] and "$$REDISCLI_AUTH" in redis["command"][-1]
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])  # authenticates through REDISCLI_AUTH


def test_every_app_service_has_a_thread_count_a_cpu_limit_and_grace() -> None:
    for name, svc in _app_services(BASE).items():
        threads = int(_env(svc)["OMP_NUM_THREADS"])
        assert 1 <= threads <= float(svc["cpus"]), f"{name}: {threads} threads on {svc['cpus']} CPUs"
    # One validation takes about 75 s: `down` must not kill the validator inside a job.
    grace = BASE["services"]["validator"]["stop_grace_period"]
    assert grace.endswith("m") and int(grace[:-1]) >= 2, grace


def test_dashboard_queries_select_the_exporting_job() -> None:
    """Every process exports every metric (at 0 where unused): an aggregation over all of
    them would show 0 instead of a negative score."""
    for title, expr in _dashboard_exprs():
        for name, selector in re.findall(r"\b(microzero_[a-z0-9_]+)(\{[^}]*\})?", expr):
            assert re.search(r'\bjob=~?"', selector), f"panel {title!r}: {name} without a job selector: {expr}"


# ---------------------------------------------------------------------------- image


def test_dockerfile_builds_one_non_root_image_with_the_microzero_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu$", text, re.M)
    # torch from its index alone (no fallback to PyPI's CUDA wheel); the rest pinned.
    assert "--extra-index-url" not in text and '--index-url "$TORCH_INDEX" torch==2.13.0' in text
    assert "pip install -c constraints.txt ." in text
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "a syntax line makes builds need Docker Hub"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["microzero"\]$', text, re.M)
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / source).exists(), f"COPY {source}: missing from the build context"
    ignored = DOCKERFILE.parent.parent.joinpath(".dockerignore").read_text().split()
    for entry in (".venv", "var", "runs", ".pytest_cache", ".git", ".env"):
        assert entry in ignored, entry


def test_constraints_pin_every_dependency_and_the_tests_install_with_them() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = {re.sub(r"[-_.]+", "-", n.lower()): v for n, v in (line.split("==") for line in lines if line[:1] != "#")}
    for requirement in wanted:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~ \[;]", requirement)[0].lower())
        assert name in pins, f"constraints.txt does not pin {name}"
    assert pins["torch"] == "2.13.0", "no local label: the CPU and CUDA wheels must both satisfy it"
    readme = (ROOT / "README.md").read_text()
    command = readme.split("<!-- test-command -->")[1].split("<!-- /test-command -->")[0]
    assert "-c constraints.txt" in command


# ---------------------------------------------------------------------------- prometheus


def _scrape_targets() -> dict[tuple[str, int], dict]:
    """(host, port) -> scrape job, over static targets and DNS service discovery."""
    config = _load_yaml(PROMETHEUS)
    targets: dict[tuple[str, int], dict] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets[(host, int(port))] = job | {"_sd": "static"}
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", "compose's DNS answers A records (SRV needs no port)"
            for name in dns["names"]:
                targets[(name, int(dns["port"]))] = job | {"_sd": "dns"}
    return targets


def test_prometheus_scrapes_every_app_service_on_its_metrics_port() -> None:
    targets = _scrape_targets()
    for name, svc in _long_running(BASE).items():
        port, path = _metrics_port(svc["command"])
        job = targets.get((name, port))
        assert job is not None, f"prometheus.yml does not scrape {name}:{port}"
        assert job.get("metrics_path", "/metrics") == path
        if svc.get("deploy", {}).get("replicas", 1) > 1:
            assert job["_sd"] == "dns", f"{name} is replicated: a static target reaches one replica only"


def test_prometheus_intervals_and_mount() -> None:
    config = _load_yaml(PROMETHEUS)
    default = config["global"]["scrape_interval"]
    for job in config["scrape_configs"]:
        seconds = int(job.get("scrape_interval", default).rstrip("s"))
        assert 5 <= seconds <= 15, job["job_name"]
    prometheus = BASE["services"]["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    assert f"./deploy/prometheus/prometheus.yml:{config_flag.split('=', 1)[1]}:ro" in prometheus["volumes"]


# ---------------------------------------------------------------------------- grafana


def test_dashboard_loads_and_every_panel_queries_something() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "microzero" and dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert {"Collection", "Learning", "Validation", "API"} <= set(rows)
    for panel in _panels(dashboard):
        assert panel.get("title"), panel
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]"), expr
            assert expr.count("{") == expr.count("}"), expr
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0


def test_every_metric_queried_exists_in_observability() -> None:
    known = set().union(*_exposed_series().values())
    sources = [(f"dashboard panel {title!r}", expr) for title, expr in _dashboard_exprs()]
    sources.append(("prometheus.yml", PROMETHEUS.read_text()))
    for where, text in sources:
        for name in _METRIC.findall(text):
            assert name in known, f"{where}: {name} is not a series of shared/observability.py ({text})"


def test_every_metric_of_observability_is_on_the_dashboard() -> None:
    used = {name for _, expr in _dashboard_exprs() for name in _METRIC.findall(expr)}
    missing = [family for family, series in _exposed_series().items() if not series & used]
    assert not missing, f"metrics without a dashboard panel: {missing}"


def test_dashboard_uses_the_provisioned_datasource() -> None:
    datasources = _load_yaml(DATASOURCES)["datasources"]
    prometheus = [d for d in datasources if d["type"] == "prometheus"]
    assert len(prometheus) == 1
    uid = prometheus[0]["uid"]
    url = urlsplit(prometheus[0]["url"])
    assert url.hostname in BASE["services"] and url.port == 9090
    for panel in _panels(_dashboard()):
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == uid, panel["title"]


def test_grafana_provisioning_is_mounted_where_it_is_read() -> None:
    grafana = BASE["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    for provider in _load_yaml(DASHBOARD_PROVIDERS)["providers"]:
        assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert DASHBOARD.parent == ROOT / "deploy" / "grafana" / "dashboards"
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


# ---------------------------------------------------------------------------- docs


def test_deploy_doc_names_every_variable_and_url() -> None:
    doc = DEPLOY_DOC.read_text()
    for variable in _variables(COMPOSE.read_text()) | _variables(COMPOSE_GPU.read_text()):
        assert variable in doc, f"docs/DEPLOY.md does not mention ${variable}"
    for needle in (
        "Compose v2",
        ".env.example",
        "docker compose up -d --build",
        "docker-compose.gpu.yml",
        "--scale collector=",
        ":8000/docs",
        ":3000",
        ":9090",
    ):
        assert needle in doc, needle
