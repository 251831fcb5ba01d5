"""The store: one object per table family, built by `Store.build` and handed to
create_app. Each owns its connections and transactions, counts tokens and makes
ids, runs the named statements of sql/queries, and turns what a statement reports
(nothing found, nothing written, and why) into domain errors. No HTTP here."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..db import Database
from ..tokens import Tokenizer
from .contexts import Contexts
from .health import Health
from .idempotency import Idempotency
from .keys import Keys
from .messages import Messages


@dataclass(frozen=True)
class Store:
    contexts: Contexts
    messages: Messages
    health: Health
    keys: Keys
    idempotency: Idempotency

    @classmethod
    def build(cls, settings: Settings, db: Database, tokenizer: Tokenizer) -> Store:
        return cls(
            contexts=Contexts(db, max_metadata_bytes=settings.max_metadata_bytes,
                              max_lineage_depth=settings.max_lineage_depth),
            messages=Messages(db, tokenizer),
            health=Health(db, tokenizer),
            keys=Keys(db),
            idempotency=Idempotency(db, ttl_seconds=settings.idempotency_ttl_hours * 3600),
        )
