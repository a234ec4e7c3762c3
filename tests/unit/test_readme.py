"""The README stays true: every setting is documented with its real default."""

from __future__ import annotations

import re
from pathlib import Path

from core.settings import Settings, env_names

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(RAG_[A-Z_]+)` \| ([^|]+) \|", README, flags=re.MULTILINE))
    assert set(rows) == set(env_names())
    for var, path in env_names().items():
        value: object = Settings()
        for part in path:
            value = getattr(value, part)
        documented = rows[var].strip().strip("`")
        if value is None:
            assert documented == "unset", var
        else:
            assert documented == (str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)), var


def test_the_two_commands_exist() -> None:
    root = Path(__file__).parents[2]
    assert "scripts/up" in README and "scripts/test" in README
    assert "scripts/test" in (root / ".ci" / "run").read_text()


def test_the_package_table_names_every_module_and_only_modules_that_exist() -> None:
    root = Path(__file__).parents[2]
    rows = re.findall(r"^\| `(core|app|workers|ingest)/` \| (.+) \|$", README, flags=re.MULTILINE)
    assert [package for package, _ in rows] == ["core", "app", "workers", "ingest"]
    for package, cell in rows:
        named = set(re.findall(r"`([a-z_]+\.py)`", cell))
        modules = {p.name for p in (root / package).rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
        assert named == modules, f"{package}/: the README names {sorted(named - modules)} that do not exist and " \
                                 f"leaves out {sorted(modules - named)}"


def test_every_test_tests_readme_names_exists() -> None:
    """tests/README.md maps the README's promises to tests: a renamed or deleted test must not leave it stale."""
    tests = Path(__file__).parents[1]
    named = re.findall(r"`((?:e2e|integration|unit)/\w+\.py)(?:::(\w+))?`(?:, `::(\w+)`)?", (tests / "README.md").read_text())
    assert len(named) > 30
    for path, *functions in named:
        source = (tests / path).read_text()
        for function in filter(None, functions):
            assert re.search(rf"^(async )?def {function}\(", source, flags=re.MULTILINE), f"{path}::{function}"


def test_the_metrics_table_names_every_metric_and_only_those_exported() -> None:
    from app.metrics import ApiMetrics
    from workers.metrics import WorkerMetrics

    section = README.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(rag_[a-z_]+)", section))
    exported: set[str] = set()
    api = ApiMetrics()
    for metrics in (api, WorkerMetrics()):
        families = [*metrics.registry.collect(), *api.backlog.describe()]
        exported |= {f.name + ("_total" if f.type == "counter" else "") for f in families if f.name.startswith("rag_")}
    assert documented == exported


def test_the_scrape_config_scrapes_the_default_ports() -> None:
    import yaml

    section = README.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    config = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    ports = {job["job_name"]: [int(t.rsplit(":", 1)[1]) for c in job["static_configs"] for t in c["targets"]]
             for job in config["scrape_configs"]}
    assert ports == {"rag-api": [Settings().api.port], "rag-workers": [9101]}
    assert "RAG_WORKER_METRICS_PORT=9101 scripts/up" in section
