"""Falcon resources: parse, validate with a marshmallow schema, call one query
function, shape the response."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..db import Database
from ..schemas import Schemas
from ..tokens import Tokenizer


@dataclass(frozen=True)
class Deps:
    """What a resource needs, injected by create_app."""

    settings: Settings
    db: Database
    schemas: Schemas
    tokenizer: Tokenizer
