def test_health_reports_database_ok(client):
    resp = client.get("/health")
    assert resp.json["status"] == "ok"
    assert resp.json["database"]["status"] == "ok"


def test_append_then_window(client):
    ctx = client.post_json("/v1/contexts", {"metadata": {"a": 1}}, status=201).json
    resp = client.post_json(
        f"/v1/contexts/{ctx['id']}/messages",
        {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hello there"}]},
        status=201,
    )
    assert resp.json["head_version"] == 2
    w = client.get(f"/v1/contexts/{ctx['id']}/window?max_tokens=3").json
    print(w)
    lst = client.get(f"/v1/contexts/{ctx['id']}/messages").json
    print(lst)
    f = client.post_json(f"/v1/contexts/{ctx['id']}/forks", {"at_version": 1}, status=201).json
    print(f)
    print(client.get(f"/v1/contexts/{f['id']}/messages").json)
    print(client.get("/v1/contexts").json)
