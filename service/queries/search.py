"""Search by words and by meaning over a context's view or a tenant: sql/queries/search.sql.

One transaction per search: the view (or the tenant's reach) is resolved, then
each ranking runs against it, so both see one snapshot. Message documents come
from PostgreSQL (cs_message_doc_v1) and pass through as JSON fragments.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from ..db import Database
from ..embeddings import Embedder, EmbeddingsUnavailable
from ..sql import QUERIES, Statement
from ..errors import Invalid
from .contexts import missing
from .roots import Roots

log = logging.getLogger("context_store")

# Reciprocal-rank fusion: score = sum over the rankings of 1 / (RRF_K + rank).
RRF_K = 60
# Each ranking of a hybrid search contributes this many candidates (at least k):
# a message ranked below it in one list still scores from the other.
RRF_DEPTH = 30

# An index walk with relaxed_order returns neighbours roughly in order: fetching
# more than k and keeping the best k by exact distance recovers the near ones that
# came late (recall@10 0.93 -> see the README's measurement).
OVERFETCH = 4
MIN_FETCH = 40

# Full-text search ranks at most this many matches, the most recent: a word found
# in every message of a long conversation costs a bounded walk, not a rank per
# message (ranks among that many matches of a common word barely differ anyway).
TEXT_CANDIDATES = 500

_CONFIG_IN_EXPRESSION = re.compile(r"to_tsvector\('([^']+)'::regconfig")


@dataclass(frozen=True)
class SearchResult:
    data: list[dict[str, Any]]  # {"message": Fragment, "score": float}, best first
    mode: str  # text, semantic or hybrid


@dataclass(frozen=True)
class Scope:
    """What a search covers. ids/los/his: holders and the versions read from each;
    exact: whether it is small enough for an exact scan; for a tenant, the filter
    that the index-walking statements apply row by row."""

    ids: list[UUID]
    los: list[int]
    his: list[int]
    exact: bool
    root_id: UUID | None = None  # a view's root (the shard key); None for a tenant
    roots: list[UUID] | None = None  # for a tenant, each holder's root
    tenant: str | None = None
    metadata: str | None = None
    cut_ids: list[UUID] | None = None
    cut_his: list[int] | None = None


class _Planned:
    """A statement of search.sql, planned for its values at every run (never
    prepared, and run after set_search_knobs): how many messages match a word, or
    how big a view is, decides the plan, and a generic plan would not know.
    Statements with a {dim} placeholder get the deployment's dimension written
    into their text: the partial HNSW index matches only a literal cast and
    predicate."""

    def __init__(self, statement: Statement, dim: int | None = None) -> None:
        self.query = pgsql.SQL(statement.text).format(dim=pgsql.Literal(dim)) if dim else statement.text

    def run(self, conn: psycopg.Connection, **params: Any) -> list[dict[str, Any]]:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(self.query, params, prepare=False)
            return cur.fetchall()


class Search:
    """Rank a context's view, or every live context of a tenant, by words, by
    meaning or both."""

    def __init__(self, db: Database, *, dim: int, text_search_config: str, exact_max: int, ef_search: int,
                 max_scan_tuples: int, embedder: Embedder | None, roots: Roots | None = None) -> None:
        self.db = db
        self.roots = Roots() if roots is None else roots
        self.dim = dim
        self.configured_text_config = text_search_config
        self._text_config: str | None = None
        self.exact_max = exact_max
        self.knobs = {"ef_search": str(ef_search), "max_scan_tuples": str(max_scan_tuples)}
        self.embedder = embedder
        self.exact = _Planned(QUERIES.search_semantic_exact, dim)
        self.exact_tenant = _Planned(QUERIES.search_semantic_exact_tenant, dim)
        self.approx_view = _Planned(QUERIES.search_semantic_view, dim)
        self.approx_tenant = _Planned(QUERIES.search_semantic_tenant, dim)
        self.text_view = _Planned(QUERIES.search_text_view)
        self.text_tenant = _Planned(QUERIES.search_text_tenant)

    def in_context(self, tenant: str, context_id: UUID, *, query: str | None, embedding: list[float] | None,
                   k: int, roles: list[str] | None = None, as_of_version: int | None = None,
                   as_of: datetime | None = None) -> SearchResult:
        """The best k messages of the context's view (as of a version or a time):
        a fork sees what it inherited up to its fork point and its own messages."""
        embedding, mode = self._plan(query, embedding)

        def search(conn: psycopg.Connection) -> SearchResult:
            with conn.transaction():
                root = self.roots.pin(conn, context_id)
                row = QUERIES.get_search_view.run(
                    conn, tenant=tenant, context_id=context_id, root_id=root, as_of_version=as_of_version, as_of=as_of
                )
                if row["status"] == "missing":
                    raise missing(context_id)
                if row["status"] == "past_head":
                    raise Invalid.pointer("/as_of_version", f"The version is past the head ({row['view_version']}).")
                scope = Scope(row["ids"] or [], row["los"] or [], row["his"] or [],
                              exact=row["view_version"] <= self.exact_max, root_id=root)
                return self._run(conn, scope, query, embedding, mode, k, roles)

        return self.db.read(search)

    def in_tenant(self, tenant: str, *, query: str | None, embedding: list[float] | None, k: int,
                  roles: list[str] | None = None, metadata: dict[str, Any] | None = None) -> SearchResult:
        """The best k messages over every live context of the tenant whose
        metadata contains `metadata`: a message shared by several forks once,
        under the context that holds it (which may be deleted, when a live fork
        inherited the message)."""
        embedding, mode = self._plan(query, embedding)
        filter_ = None if metadata is None else orjson.dumps(metadata).decode()

        def search(conn: psycopg.Connection) -> SearchResult:
            with conn.transaction():
                row = QUERIES.get_search_reach.run(conn, tenant=tenant, metadata=filter_)
                scope = Scope(row["ids"], row["los"], row["his"], exact=row["size"] <= self.exact_max,
                              roots=row["roots"], tenant=tenant, metadata=filter_, cut_ids=row["cut_ids"],
                              cut_his=row["cut_his"])
                return self._run(conn, scope, query, embedding, mode, k, roles)

        return self.db.read(search)

    def _plan(self, query: str | None, embedding: list[float] | None) -> tuple[list[float] | None, str]:
        """The query embedding and the mode: a text query alone is embedded by the
        server when it can (hybrid), else searched by words (text). Called before
        a connection is taken: the call to the endpoint never holds one."""
        if embedding is not None:
            return embedding, "semantic" if query is None else "hybrid"
        if self.embedder is not None and query is not None:
            try:
                return self.embedder.embed_query(query), "hybrid"
            except EmbeddingsUnavailable as exc:
                log.warning("search falls back to words: %s", exc)
        return None, "text"

    def _run(self, conn: psycopg.Connection, scope: Scope, query: str | None, embedding: list[float] | None,
             mode: str, k: int, roles: list[str] | None) -> SearchResult:
        if not scope.ids:
            return SearchResult([], mode)
        QUERIES.set_search_knobs.run(conn, **self.knobs)
        depth = k if mode != "hybrid" else max(k, RRF_DEPTH)
        rankings = []
        if mode in ("semantic", "hybrid"):
            rankings.append(self._semantic(conn, scope, embedding, depth, roles))
        if mode in ("text", "hybrid"):
            rankings.append(self._text(conn, scope, query, depth, roles))
        if mode != "hybrid":
            return SearchResult([{"message": r["doc"], "score": float(r["score"])} for r in rankings[0]], mode)
        return SearchResult(fuse(rankings, k), mode)

    def _semantic(self, conn: psycopg.Connection, scope: Scope, embedding: list[float] | None, k: int,
                  roles: list[str] | None) -> list[dict[str, Any]]:
        vector = _vector_text(embedding)
        common = {"embedding": vector, "k": k, "roles": roles}
        if scope.exact and scope.tenant is None:
            return self.exact.run(conn, root_id=scope.root_id, ids=scope.ids, los=scope.los, his=scope.his, **common)
        if scope.exact:
            return self.exact_tenant.run(conn, roots=scope.roots, ids=scope.ids, los=scope.los, his=scope.his,
                                         **common)
        common["fetch"] = max(min(k * OVERFETCH, k + 100), MIN_FETCH)
        if scope.tenant is None:
            return self.approx_view.run(conn, root_id=scope.root_id, ids=scope.ids, his=scope.his, **common)
        return self.approx_tenant.run(conn, tenant=scope.tenant, metadata=scope.metadata, cut_ids=scope.cut_ids,
                                      cut_his=scope.cut_his, **common)

    def _text(self, conn: psycopg.Connection, scope: Scope, query: str | None, k: int,
              roles: list[str] | None) -> list[dict[str, Any]]:
        config = self.text_config(conn)
        if scope.tenant is None:
            return self.text_view.run(conn, config=config, query=query, root_id=scope.root_id, ids=scope.ids,
                                      los=scope.los,
                                                his=scope.his, k=k, roles=roles, candidates=TEXT_CANDIDATES)
        return self.text_tenant.run(conn, config=config, query=query, tenant=scope.tenant,
                                              metadata=scope.metadata, cut_ids=scope.cut_ids,
                                              cut_his=scope.cut_his, k=k, roles=roles,
                                              candidates=TEXT_CANDIDATES)

    def text_config(self, conn: psycopg.Connection) -> str:
        """The configuration the words were indexed with: queries must be parsed
        the same way, whatever TEXT_SEARCH_CONFIG says until `worker
        --ensure-indexes` applies it (said once, in the log)."""
        if self._text_config is None:
            expression = QUERIES.get_text_search_config.run(conn) or ""
            match = _CONFIG_IN_EXPRESSION.search(expression)
            found = match[1] if match else self.configured_text_config
            if found != self.configured_text_config:
                log.warning(
                    "TEXT_SEARCH_CONFIG=%s but messages are indexed with %r: searching with %r until "
                    "`context-store worker --ensure-indexes` re-indexes them",
                    self.configured_text_config, found, found,
                )
            self._text_config = found
        return self._text_config


def fuse(rankings: list[list[dict[str, Any]]], k: int) -> list[dict[str, Any]]:
    """Reciprocal-rank fusion: each message scores sum of 1 / (RRF_K + rank) over
    the rankings it appears in (rank from 1); the best k, ties by holder and
    version for a stable order."""
    scores: dict[tuple[UUID, int], float] = {}
    docs: dict[tuple[UUID, int], Any] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            key = (row["context_id"], row["version"])
            scores[key] = scores.get(key, 0.0) + 1.0 / (RRF_K + rank)
            docs[key] = row["doc"]
    best = sorted(scores, key=lambda key: (-scores[key], str(key[0]), key[1]))[:k]
    return [{"message": docs[key], "score": scores[key]} for key in best]


def _vector_text(embedding: list[float] | None) -> str:
    # pgvector's text form is a JSON array; orjson writes the shortest exact floats.
    return orjson.dumps(embedding).decode()
