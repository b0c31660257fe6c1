async def test_whoami_passes_spec_and_sdk(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get("/sessions/whoami", headers={"X-Session-Token": alice.token})
    assert r.status_code == 200
    r = await kratos.admin.get("/admin/sessions")
    assert r.status_code == 200
    assert r.json()[0]["identity"] is None
    r = await kratos.public.get("/sessions/whoami")
    assert r.status_code == 401
