"""GET /openapi.json: a valid OpenAPI 3.1 document that describes API.md, and
whose component schemas the live responses satisfy."""

from __future__ import annotations

import re
import uuid

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from service.openapi import UndocumentedRoute, _path, build_spec, served_routes
from service.schemas.requests import RequestSchemas

EXPECTED_QUERY = {
    ("/v1/contexts", "get"): {"limit", "after", "metadata"},
    ("/v1/contexts/{}", "get"): {"as_of_version", "as_of"},
    ("/v1/contexts/{}/messages", "get"): {"limit", "after", "before", "order", "as_of_version", "as_of", "include"},
    ("/v1/contexts/{}/messages/{}", "get"): {"include"},
    ("/v1/contexts/{}/window", "get"): {"max_tokens", "pin_system", "as_of_version", "as_of"},
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def template(path: str) -> str:
    """A path with its parameter names erased: /v1/contexts/{context_id} -> /v1/contexts/{}."""
    return re.sub(r"\{[^}]*\}", "{}", path)


@pytest.fixture
def document(client) -> dict:
    resp = client.get("/openapi.json", status=200)
    assert resp.content_type == "application/json"
    return resp.json


def operations(document) -> dict[tuple[str, str], dict]:
    found = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                found[(template(path), method)] = {"operation": operation, "path_item": item}
    return found


def parameters(entry: dict, where: str) -> dict[str, dict]:
    params = [*entry["path_item"].get("parameters", []), *entry["operation"].get("parameters", [])]
    return {p["name"]: p for p in params if p["in"] == where}


def validator(document: dict, schema: dict) -> Draft202012Validator:
    """A 2020-12 validator for schema, with #/components/... resolving into the document."""
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "components": document["components"]}
    return Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)


def component(document: dict, name: str) -> Draft202012Validator:
    assert name in document["components"]["schemas"], sorted(document["components"]["schemas"])
    return validator(document, {"$ref": f"#/components/schemas/{name}"})


def documented(document: dict, path: str, method: str, status: int, media_type: str) -> Draft202012Validator:
    """The schema the document gives for one operation's response."""
    entry = operations(document)[(template(path), method)]
    response = entry["operation"]["responses"][str(status)]
    return validator(document, response["content"][media_type]["schema"])


def assert_valid(v: Draft202012Validator, instance) -> None:
    errors = sorted(v.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


# ---------------------------------------------------------------- the document


def test_openapi_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    validate(document)
    assert document["info"]["title"]
    assert document["info"]["version"]


def test_the_document_lists_exactly_the_routes_the_app_serves(app, document):
    served = {(template(_path(route.template)[0]), route.method.lower()) for route in served_routes(app)}
    assert served == set(operations(document))
    # API.md's endpoints, all served (search is not built yet).
    assert {
        ("/health", "get"), ("/openapi.json", "get"), ("/v1/contexts", "get"), ("/v1/contexts", "post"),
        ("/v1/contexts/{}", "get"), ("/v1/contexts/{}", "head"), ("/v1/contexts/{}", "patch"),
        ("/v1/contexts/{}", "delete"), ("/v1/contexts/{}/messages", "get"), ("/v1/contexts/{}/messages", "post"),
        ("/v1/contexts/{}/messages/{}", "get"), ("/v1/contexts/{}/window", "get"), ("/v1/contexts/{}/forks", "post"),
    } <= served


def test_every_operation_has_a_unique_operation_id_and_a_tag(document):
    ids = [entry["operation"]["operationId"] for entry in operations(document).values()]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[a-z][A-Za-z]+", i) for i in ids), ids
    assert all(entry["operation"]["tags"] for entry in operations(document).values())


def test_a_route_without_documentation_fails_the_document(settings, app):
    class Undocumented:
        def on_get(self, req, resp):
            pass

    app.add_route("/v1/undocumented", Undocumented())
    with pytest.raises(UndocumentedRoute, match="GET /v1/undocumented"):
        build_spec(app, RequestSchemas(settings), settings)


def test_every_v1_operation_may_answer_401_and_every_operation_422_and_503(document):
    for (path, method), entry in operations(document).items():
        responses = set(entry["operation"]["responses"])
        assert {"422", "503"} <= responses, (path, method)
        assert ("401" in responses) == path.startswith("/v1/"), (path, method)


def test_openapi_lists_each_operations_statuses(document):
    # ... with their success and error statuses.
    ops = operations(document)
    expected = {
        ("/v1/contexts", "post"): {"201", "400", "415", "422"},
        ("/v1/contexts", "get"): {"200", "400", "422"},
        ("/v1/contexts/{}", "get"): {"200", "404"},
        ("/v1/contexts/{}", "head"): {"200", "404"},
        ("/v1/contexts/{}", "patch"): {"200", "404", "415", "422"},
        ("/v1/contexts/{}", "delete"): {"204", "404"},
        ("/v1/contexts/{}/messages", "post"): {"201", "404", "412", "413", "422"},
        ("/v1/contexts/{}/messages", "get"): {"200", "404", "422"},
        ("/v1/contexts/{}/messages/{}", "get"): {"200", "404"},
        ("/v1/contexts/{}/window", "get"): {"200", "404", "422"},
        ("/v1/contexts/{}/forks", "post"): {"201", "404", "422"},
    }
    for key, statuses in expected.items():
        declared = set(ops[key]["operation"]["responses"])
        assert statuses <= declared, (key, statuses - declared)
    problem = ops[("/v1/contexts/{}/messages", "post")]["operation"]["responses"]["412"]
    assert "application/problem+json" in problem["content"]


def test_openapi_describes_the_query_path_and_header_parameters(document):
    ops = operations(document)
    for key, names in EXPECTED_QUERY.items():
        query = parameters(ops[key], "query")
        assert names <= set(query), (key, names - set(query))
    window = parameters(ops[("/v1/contexts/{}/window", "get")], "query")
    assert window["max_tokens"].get("required") is True
    assert window["max_tokens"]["schema"].get("minimum") == 1
    assert window["max_tokens"]["schema"].get("maximum") == 10_000_000
    limit = parameters(ops[("/v1/contexts", "get")], "query")["limit"]["schema"]
    assert (limit.get("minimum"), limit.get("maximum"), limit.get("default")) == (1, 1000, 100)
    order = parameters(ops[("/v1/contexts/{}/messages", "get")], "query")["order"]["schema"]
    assert set(order.get("enum", [])) == {"asc", "desc"}

    # Path and header parameters.
    for (path, method), entry in ops.items():
        if "{}" in path:
            path_params = parameters(entry, "path")
            assert len(path_params) == path.count("{}"), (path, method)
            assert all(p.get("required") is True for p in path_params.values())
    assert "If-Match" in parameters(ops[("/v1/contexts/{}/messages", "post")], "header")


# ---------------------------------------------------------------- live responses


def test_live_responses_validate_against_the_component_schemas(client, document):
    vector = [0.25] * 1536
    created = client.post_json("/v1/contexts", {"metadata": {"team": "a"}}, status=201)
    assert_valid(component(document, "Context"), created.json)
    assert_valid(documented(document, "/v1/contexts", "post", 201, "application/json"), created.json)
    cid = created.json["id"]

    appended = client.post_json(
        f"/v1/contexts/{cid}/messages",
        {
            "messages": [
                {"role": "system", "content": "rules", "embedding": vector},
                {"role": "user", "content": "hello", "metadata": {"k": [1, None]}},
                {"role": "assistant", "content": "", "token_count": 0},
            ]
        },
        status=201,
    )
    assert_valid(component(document, "AppendResult"), appended.json)
    assert_valid(documented(document, "/v1/contexts/{}/messages", "post", 201, "application/json"),
                 appended.json)

    for params in ({}, {"include": "embedding"}, {"limit": 1, "order": "desc"}):
        page = client.get(f"/v1/contexts/{cid}/messages", params, status=200).json
        assert page["data"]
        assert_valid(component(document, "MessagePage"), page)
        assert_valid(documented(document, "/v1/contexts/{}/messages", "get", 200, "application/json"), page)

    message = client.get(f"/v1/contexts/{cid}/messages/1", {"include": "embedding"}, status=200).json
    assert_valid(component(document, "Message"), message)

    for params in ({"max_tokens": 100}, {"max_tokens": 1, "pin_system": "true"}):
        win = client.get(f"/v1/contexts/{cid}/window", params, status=200).json
        assert_valid(component(document, "Window"), win)
        assert_valid(documented(document, "/v1/contexts/{}/window", "get", 200, "application/json"), win)

    context = client.get(f"/v1/contexts/{cid}", status=200).json
    assert_valid(component(document, "Context"), context)
    fork = client.post_json(f"/v1/contexts/{cid}/forks", {"at_version": 1}, status=201).json
    assert_valid(component(document, "Context"), fork)
    contexts = client.get("/v1/contexts", {"limit": 1}, status=200).json
    assert contexts["has_more"] is True
    assert_valid(component(document, "ContextPage"), contexts)
    assert_valid(component(document, "Health"), client.get("/health", status=200).json)


def test_problem_responses_validate_against_the_problem_schema(client, document):
    cid = client.post_json("/v1/contexts", {}, status=201).json["id"]
    problems = [
        (client.get(f"/v1/contexts/{uuid.uuid4()}", expect_errors=True), "/v1/contexts/{}", "get", 404),
        (client.get("/v1/contexts", {"limit": 0}, expect_errors=True), "/v1/contexts", "get", 422),
        (
            client.post_json(f"/v1/contexts/{cid}/messages", {"messages": [{"role": "x"}]}, expect_errors=True),
            "/v1/contexts/{}/messages",
            "post",
            422,
        ),
        (
            client.post_json(
                f"/v1/contexts/{cid}/messages",
                {"messages": [{"role": "user", "content": "x"}]},
                headers={"If-Match": '"9"'},
                expect_errors=True,
            ),
            "/v1/contexts/{}/messages",
            "post",
            412,
        ),
        (
            client.post("/v1/contexts", "{", headers={"Content-Type": "application/json"}, expect_errors=True),
            "/v1/contexts",
            "post",
            400,
        ),
    ]
    for resp, path, method, status in problems:
        assert resp.status_int == status
        assert resp.content_type == "application/problem+json"
        assert_valid(component(document, "Problem"), resp.json)
        assert_valid(documented(document, path, method, status, "application/problem+json"), resp.json)
