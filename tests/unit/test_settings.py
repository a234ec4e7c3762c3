from pathlib import Path

import pytest

from core.settings import Settings, SettingsError, env_names, load_settings


def load(**env: str) -> Settings:
    return load_settings(environ=env, dotenv=None)


def test_defaults_without_any_variable():
    s = load_settings(environ={"PATH": "/usr/bin", "HOME": "/root"}, dotenv=None)
    assert s == Settings()
    assert s.redis.url == "redis://127.0.0.1:6390/0"
    assert s.worker.batch_size == 16
    assert s.qdrant.url is None
    assert s.qdrant_path == Path("data") / "qdrant"


def test_env_names_map_sections_and_top_level_fields():
    names = env_names()
    assert names["RAG_REDIS_URL"] == ("redis", "url")
    assert names["RAG_WORKER_BATCH_SIZE"] == ("worker", "batch_size")
    assert names["RAG_DATA_DIR"] == ("data_dir",)


def test_env_values_are_mapped_and_converted():
    s = load(
        RAG_REDIS_URL="redis://cache:6380/2",
        RAG_WORKER_BATCH_SIZE="64",
        RAG_DATA_DIR="/srv/rag",
        RAG_LLM_TEMPERATURE="0.7",
        RAG_LLM_BACKEND="extractive",
        RAG_API_PORT="9000",
    )
    assert s.redis.url == "redis://cache:6380/2"
    assert s.redis.prefix == "rag"  # untouched sibling keeps its default
    assert s.worker.batch_size == 64 and isinstance(s.worker.batch_size, int)
    assert s.data_dir == "/srv/rag"
    assert s.qdrant_path == Path("/srv/rag/qdrant")
    assert s.llm.temperature == 0.7
    assert s.llm.backend == "extractive"
    assert s.api.port == 9000


def test_empty_string_makes_optional_none_and_keeps_required_default():
    s = load(RAG_LLM_BASE_URL="", RAG_QDRANT_API_KEY="", RAG_LLM_MODEL="", RAG_LLM_BACKEND="extractive")
    assert s.llm.base_url is None
    assert s.qdrant.api_key is None
    assert s.llm.model == "smollm2"


@pytest.mark.parametrize(
    "var, value",
    [
        ("RAG_WORKER_BATCH_SIZE", "0"),
        ("RAG_WORKER_BATCH_SIZE", "abc"),
        ("RAG_API_PORT", "70000"),
        ("RAG_LOG_LEVEL", "verbose"),
        ("RAG_LLM_TIMEOUT_S", "-1"),
    ],
)
def test_bad_value_names_the_variable(var, value):
    with pytest.raises(SettingsError) as err:
        load(**{var: value})
    assert str(err.value).startswith(f"{var}:")


@pytest.mark.parametrize(
    "env, var",
    [
        ({"RAG_EMBEDDER_BACKEND": "openai"}, "RAG_EMBEDDER_BASE_URL"),
        ({"RAG_LLM_BASE_URL": ""}, "RAG_LLM_BASE_URL"),  # the openai backend, the default
        ({"RAG_RERANKER_BACKEND": "tei"}, "RAG_RERANKER_BASE_URL"),
        ({"RAG_EMBEDDER_BASE_URL": "localhost:8080/v1"}, "RAG_EMBEDDER_BASE_URL"),
        ({"RAG_REDIS_URL": "foo://cache:6379"}, "RAG_REDIS_URL"),
        ({"RAG_REDIS_URL": "redis://cache:99999/0"}, "RAG_REDIS_URL"),
        ({"RAG_REDIS_URL": "redis:///0"}, "RAG_REDIS_URL"),
        ({"RAG_REDIS_PREFIX": "a{b}"}, "RAG_REDIS_PREFIX"),
        ({"RAG_QDRANT_URL": "qdrant:6333"}, "RAG_QDRANT_URL"),
        ({"RAG_QDRANT_COLLECTION": "a/b"}, "RAG_QDRANT_COLLECTION"),
        ({"RAG_INGEST_OVERLAP_WORDS": "120"}, "RAG_INGEST_OVERLAP_WORDS"),
        ({"RAG_INGEST_OVERLAP_TOKENS": "200"}, "RAG_INGEST_OVERLAP_TOKENS"),
        ({"RAG_LIMITS_TOP_K_DEFAULT": "30"}, "RAG_LIMITS_TOP_K_DEFAULT"),
        ({"RAG_RETRIEVAL_DENSE_WEIGHT": "0", "RAG_RETRIEVAL_SPARSE_WEIGHT": "0", "RAG_RETRIEVAL_HEADING_WEIGHT": "0"},
         "RAG_RETRIEVAL_DENSE_WEIGHT"),
        ({"RAG_INGEST_OCR_LANGUAGE": "eng deu"}, "RAG_INGEST_OCR_LANGUAGE"),
        ({"RAG_API_HOST": " "}, "RAG_API_HOST"),
    ],
)
def test_settings_that_cannot_work_together_name_the_variable(env, var):
    with pytest.raises(SettingsError) as err:
        load(**env)
    assert str(err.value).startswith(f"{var}:")


def test_settings_that_work_together_load():
    s = load(RAG_EMBEDDER_BACKEND="openai", RAG_EMBEDDER_BASE_URL="http://127.0.0.1:9/v1",
             RAG_REDIS_URL="unix:///run/redis.sock", RAG_RETRIEVAL_MODE="dense", RAG_RETRIEVAL_DENSE_WEIGHT="0",
             RAG_RETRIEVAL_SPARSE_WEIGHT="0", RAG_RETRIEVAL_HEADING_WEIGHT="0", RAG_INGEST_OCR_LANGUAGE="eng+chi_sim")
    assert s.embedder.base_url == "http://127.0.0.1:9/v1" and s.redis.url.startswith("unix://")


def test_unknown_rag_variable_is_rejected():
    with pytest.raises(SettingsError, match="RAG_WORKER_BATCHSIZE"):
        load(RAG_WORKER_BATCHSIZE="8")


def test_dotenv_is_read_and_environment_wins(tmp_path):
    dotenv = tmp_path / ".env"
    lines = [
        "# comment",
        "RAG_REDIS_PREFIX='test'",
        'export RAG_WORKER_BATCH_SIZE="4"',
        "",
        "RAG_DATA_DIR=/from/dotenv",
    ]
    dotenv.write_text("\n".join(lines) + "\n")
    s = load_settings(environ={}, dotenv=dotenv)
    assert (s.redis.prefix, s.worker.batch_size, s.data_dir) == ("test", 4, "/from/dotenv")

    s = load_settings(environ={"RAG_DATA_DIR": "/from/env"}, dotenv=dotenv)
    assert s.data_dir == "/from/env"
    assert s.worker.batch_size == 4


def test_missing_dotenv_file_is_ignored(tmp_path):
    assert load_settings(environ={}, dotenv=tmp_path / "absent.env") == Settings()


def test_unknown_variable_in_dotenv_is_rejected(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("RAG_NOPE=1\n")
    with pytest.raises(SettingsError, match="RAG_NOPE"):
        load_settings(environ={}, dotenv=dotenv)
