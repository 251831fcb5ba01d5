"""The store: one object per table family, built by `Store.build` and handed to
create_app. Each owns its connections and transactions, counts tokens and makes
ids, runs the named statements of sql/queries, and turns what a statement reports
(nothing found, nothing written, and why) into domain errors. No HTTP here."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..db import Database
from ..replicas import Replicas
from ..embeddings import Embedder
from ..tokens import Tokenizer
from .contexts import Contexts
from .health import Health
from .idempotency import Idempotency
from .keys import Keys
from .messages import Messages
from .roots import Roots
from .search import Search


@dataclass(frozen=True)
class Store:
    contexts: Contexts
    messages: Messages
    health: Health
    keys: Keys
    idempotency: Idempotency
    search: Search
    replicas: Replicas | None = None  # the database's standbys, when it reads from some

    @classmethod
    def build(cls, settings: Settings, db: Database, tokenizer: Tokenizer) -> Store:
        embedder = Embedder.from_settings(settings)
        roots = Roots()  # one per worker, shared: a context's root is the same for every family
        return cls(
            contexts=Contexts(db, roots, max_metadata_bytes=settings.max_metadata_bytes,
                              max_lineage_depth=settings.max_lineage_depth),
            messages=Messages(db, roots, tokenizer),
            health=Health(db, tokenizer, embedder),
            keys=Keys(db),
            idempotency=Idempotency(db, ttl_seconds=settings.idempotency_ttl_hours * 3600),
            search=Search(db, dim=settings.embedding_dim, text_search_config=settings.text_search_config,
                          exact_max=settings.search_exact_max, ef_search=settings.search_ef_search,
                          max_scan_tuples=settings.search_max_scan_tuples, embedder=embedder, roots=roots),
            replicas=db.replicas,
        )
