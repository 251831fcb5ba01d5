"""A client generated from /openapi.json by openapi-python-client, as a user makes
one: it generates without a warning, names its operations, and drives the real app
(over httpx's WSGI transport) through create, append, page, window and fork."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


@pytest.fixture
def generated(client, tmp_path: Path):
    spec = tmp_path / "openapi.json"
    spec.write_bytes(client.get("/openapi.json").body)
    done = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(spec), "--meta", "none",
         "--output-path", str(tmp_path / "context_store_client")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Warning" not in output and "warning" not in output, output
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("context_store_client")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.startswith("context_store_client")]:
            del sys.modules[name]


def test_a_generated_client_names_its_operations_and_drives_the_api(generated, app):
    from context_store_client.api.contexts import create_context, fork_context
    from context_store_client.api.messages import append_messages, get_window, list_messages
    from context_store_client.models import AppendMessages, ContextCreate, ForkCreate, MessageIn, MessageInRole
    from context_store_client.types import UNSET

    api = generated.Client(base_url="http://testserver", httpx_args={"transport": httpx.WSGITransport(app=app)})
    created = create_context.sync(client=api, body=ContextCreate.from_dict({"metadata": {"user": "ada"}}))
    assert created.head_version == 0 and created.metadata.to_dict() == {"user": "ada"}

    # Typed clients send null for optional fields they were not given: absent, to the server.
    batch = AppendMessages(messages=[MessageIn(role=MessageInRole.USER, content=f"m{i}", token_count=None, metadata=None)
                                     for i in range(5)])
    appended = append_messages.sync(client=api, context_id=created.id, body=batch)
    assert appended.head_version == 5 and all(m.token_count >= 1 for m in appended.data)

    page = list_messages.sync(client=api, context_id=created.id, limit=2)
    assert [m.version for m in page.data] == [1, 2] and page.has_more
    following = list_messages.sync(client=api, context_id=created.id, limit=2, after=page.next_cursor)
    assert [m.version for m in following.data] == [3, 4]

    window = get_window.sync(client=api, context_id=created.id, max_tokens=100)
    assert window.to_version == 5 and window.truncated is False

    fork = fork_context.sync(client=api, context_id=created.id, body=ForkCreate(at_version=None, metadata=UNSET))
    assert str(fork.parent_id) == str(created.id) and fork.fork_version == 5
