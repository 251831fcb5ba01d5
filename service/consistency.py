"""Read-your-writes across replicas, in HTTP terms (service/replicas.py has the
rules): a successful write answers with `Consistency-Token`, the primary's WAL
position after its commit; a read that sends the token back sees that write.

The header is checked on every request (422 naming it when it is not a WAL
position) whether or not the deployment has replicas, so that a client behaves
the same against either; only a deployment with replicas sends tokens.
"""

from __future__ import annotations

import falcon

from .errors import Invalid
from .replicas import HEADER, Replicas, parse_lsn, wanted

# Methods that write; a search is a POST that only reads (its resource says so).
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Consistency:
    def __init__(self, replicas: Replicas | None) -> None:
        self.replicas = replicas

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = req.get_header(HEADER)
        token = None
        if raw is not None:
            token = parse_lsn(raw.strip())
            if token is None:
                raise Invalid([{"header": HEADER, "detail": "Expected a WAL position such as 0/16B3748, as a "
                                                            "write's Consistency-Token gave it."}])
        wanted.set(token)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        wanted.set(None)  # the thread's next request starts without one
        if (self.replicas is None or req.method not in _WRITES or not 200 <= resp.status_code < 300
                or getattr(resource, "read_only", False)):
            return
        position = self.replicas.write_position()
        if position is not None:
            resp.set_header(HEADER, position)
