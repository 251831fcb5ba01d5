"""The server against its own OpenAPI document, with schemathesis: positive and
negative data for every operation, on made-up ids and on a real context: no 5xx,
every status, content type, header and body as the document says, and data the
document forbids is refused.

A regression gate, bounded in time (examples per operation below). The check that
the server accepts everything the document allows (positive_data_acceptance) runs
by hand with `st run --checks all`: it reports the rules a schema cannot express,
which the document's description lists with their reasons."""

from __future__ import annotations

from dataclasses import replace

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from service.app import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EXAMPLES = 12


# schemathesis's strategies draw from the random module, which this hypothesis
# version warns about; not ours to change.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_every_operation_keeps_to_the_document(settings_small_embeddings, store, mode):
    app = create_app(settings_small_embeddings, store)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    context = store.contexts.create("default", {"k": "v"})["id"]
    store.messages.append("default", context, [{"role": "system", "content": "hi there"}] * 3)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13
    nothing_to_negate = set()
    for operation in operations:
        real = {"context_id": str(context)} if "{context_id}" in operation.path else None
        for path_parameters in ((None,) if real is None else (None, real)):

            @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def keeps_to_the_document(case):
                case.call_and_validate(checks=CHECKS)

            try:
                keeps_to_the_document()
            except Unsatisfiable:
                # Every input of the operation accepts anything (a free-form header):
                # no data the document forbids exists to send.
                # (or the one input left is the real id passed in).
                assert mode is GenerationMode.NEGATIVE, operation.label
                if path_parameters is None:
                    nothing_to_negate.add(operation.label)
    assert nothing_to_negate <= {"GET /health", "GET /metrics", "GET /openapi.json"}, nothing_to_negate


@pytest.fixture
def settings_small_embeddings(settings):
    # A small embedding dimension keeps generated bodies small.
    return replace(settings, embedding_dim=4)
