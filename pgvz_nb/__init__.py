"""pgvz_nb: keep vector embeddings of PostgreSQL tables in sync, from a Jupyter notebook."""

from .db import Database, connect
from .errors import PgvzError
from .uuids import uuid_from_time
from .vectorizer import Vectorize

__all__ = ["Database", "PgvzError", "Vectorize", "connect", "sample", "uuid_from_time"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # heavier parts load on first use so that `import pgvz_nb` stays fast
    if name == "sample":
        from . import sample

        return sample
    raise AttributeError(f"module 'pgvz_nb' has no attribute {name!r}")
