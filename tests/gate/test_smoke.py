async def test_gate_admits_valid_token_and_forwards_identity(stack):
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        r = await c.get("/hello", headers={"X-Session-Token": alice.token, "X-User-Id": "evil"})
        assert r.status_code == 200, r.text
        h = stack.app.last_headers()
        assert h["x-user-id"] == [alice.identity_id]
        assert h["x-user-email"] == ["alice@example.com"]
        r = await c.get("/hello")
        assert r.status_code == 401
        r = await c.get("/hello", headers={"Accept": "text/html"})
        assert r.status_code == 303, r.headers
        print(r.headers["location"])
