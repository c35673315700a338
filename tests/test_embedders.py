"""The default embedder: offline, no torch, and the same vectors as sentence-transformers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pgvz_nb.embedders import MiniLMEmbedder, default_embedder, embedder_identity
from pgvz_nb.errors import PgvzError
from pgvz_nb.sample import BLOG_POSTS


def reference_texts() -> list[str]:
    from pydoc_data.topics import topics

    docs = [topics[t][:1200] for t in ("function", "try", "with", "class", "lambda")]
    return ([p[4] for p in BLOG_POSTS] + [p[0] for p in BLOG_POSTS] + docs
            + ["Blogs about cats", "Ünïcödé, accents and emoji 🐱 work", "x" * 3000])


def test_agrees_with_sentence_transformers():
    pytest.importorskip("sentence_transformers", reason="make test installs the reference backend")
    texts = reference_texts()
    ours = default_embedder().encode(texts)
    reference = MiniLMEmbedder(backend="sentence-transformers").encode(texts)
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= 0.99, (cosines.min(), texts[int(cosines.argmin())][:60])
    assert reference.shape == ours.shape == (len(texts), 384)


def test_default_install_path_never_imports_torch():
    code = ("import sys, pgvz_nb as p; e = p.default_embedder(); e.embed_query('hi'); "
            "print('torch' in sys.modules, 'sentence_transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_identity_and_dimensions_are_stable():
    e = default_embedder()
    assert e.dimensions == 384 and len(e.embed_query("x")) == 384
    assert embedder_identity(e) == "sentence-transformers/all-MiniLM-L6-v2"
    assert default_embedder() is e, "one model per process"


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(PgvzError, match="expected 'onnx'"):
        MiniLMEmbedder(backend="tensorflow")


def test_long_text_is_truncated_not_failed():
    v = np.asarray(default_embedder().embed_query("word " * 5000))
    assert v.shape == (384,) and abs(np.linalg.norm(v) - 1) < 1e-5
