"""pgvz_nb: keep vector embeddings of PostgreSQL tables in sync, from a Jupyter notebook."""

from .db import Database, connect
from .errors import PgvzError
from .uuids import uuid_from_time
from .vectorizer import SyncReport, Vectorize, Vectorizer, vectorizers

__all__ = [
    "Database", "PgvzError", "SyncReport", "Vectorize", "Vectorizer", "connect",
    "default_embedder", "sample", "uuid_from_time", "vectorizers",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # the model and sample data load on first use so that `import pgvz_nb` stays fast
    import importlib

    if name == "sample":
        return importlib.import_module(".sample", __name__)
    if name == "default_embedder":
        return importlib.import_module(".embedders", __name__).default_embedder
    raise AttributeError(f"module 'pgvz_nb' has no attribute {name!r}")
