"""Embedders. Any object with LangChain's ``embed_documents`` / ``embed_query`` works.

``HashingEmbedder`` is a deterministic bag-of-words stand-in (feature hashing of words
and character trigrams). It is fast and needs nothing, which suits engine tests and the
first demo, but it matches shared words, not meanings: it is not a semantic model.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

__all__ = ["HashingEmbedder"]

_WORD = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset(
    "a an and are as at be but by for from has have i in is it its my of on or our so that the "
    "their them they this to was we were what when which who why will with you your about".split()
)


class HashingEmbedder:
    """Deterministic bag-of-words embeddings (NOT semantic): words and their character
    trigrams hashed into ``dimensions`` signed buckets, L2-normalised for cosine distance."""

    model_id = "pgvz-hashing-v1"

    def __init__(self, dimensions: int = 384):
        self.dimensions = dimensions

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
        return [self._embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._embed(text)
