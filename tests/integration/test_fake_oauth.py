"""Conformance of the fake identity platform: minted tokens, refresh with rotation,
invalid_grant, access-token expiry, and the device-code state machine."""

GRANT_DEVICE = "urn:ietf:params:oauth:grant-type:device_code"


def refresh(fake, rt):
    return fake.oauth("token", {"grant_type": "refresh_token", "client_id": "cid",
                                "refresh_token": rt, "scope": "Files.Read offline_access"})


def test_minted_token_works_and_refresh_rotates(fake):
    pair = fake.mint()
    assert pair["token_type"] == "Bearer" and pair["expires_in"] > 3000
    assert fake.get("/me/drive", token=pair["access_token"]).status == 200
    r = refresh(fake, pair["refresh_token"])
    assert r.status == 200, r
    new = r.json()
    assert new["refresh_token"] != pair["refresh_token"]
    assert new["scope"] == "Files.Read offline_access"
    assert fake.get("/me/drive", token=new["access_token"]).status == 200
    # rotation: the old refresh token is dead
    r = refresh(fake, pair["refresh_token"])
    assert r.status == 400 and r.json()["error"] == "invalid_grant"
    # the new one works once
    assert refresh(fake, new["refresh_token"]).status == 200
    # a tenant id instead of common works too
    r = fake.oauth("token", {"grant_type": "refresh_token", "client_id": "cid",
                             "refresh_token": "garbage"}, tenant="consumers")
    assert r.status == 400 and r.json()["error"] == "invalid_grant"


def test_access_tokens_expire(fake_factory, tree):
    f = fake_factory("--data", tree[0], "--access-lifetime", "120")
    pair = f.mint()
    assert pair["expires_in"] == 120
    assert f.get("/me/drive", token=pair["access_token"]).status == 200
    f.admin("tokens/expire", {})
    r = f.get("/me/drive", token=pair["access_token"])
    assert r.status == 401
    assert r.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert "expired" in r.json()["error"]["message"]
    # refreshing gives a working token again
    r = refresh(f, pair["refresh_token"])
    assert f.get("/me/drive", token=r.json()["access_token"]).status == 200
    # revoke: every refresh token answers invalid_grant
    f.admin("tokens/revoke", {})
    assert refresh(f, r.json()["refresh_token"]).json()["error"] == "invalid_grant"


def test_short_lived_access_token_expires_by_time(fake):
    import time
    pair = fake.mint(lifetime=0.3)
    assert fake.get("/me/drive", token=pair["access_token"]).status == 200
    time.sleep(0.4)                    # past the lifetime the fake gave the token
    r = fake.get("/me/drive", token=pair["access_token"])
    assert r.status == 401 and "expired" in r.json()["error"]["message"]


def test_refresh_temporarily_unavailable(fake):
    pair = fake.mint()
    fake.admin("auth", {"refresh_unavailable": True})
    r = refresh(fake, pair["refresh_token"])
    assert r.status == 503 and r.json()["error"] == "temporarily_unavailable"
    fake.admin("auth", {"refresh_unavailable": False})
    assert refresh(fake, pair["refresh_token"]).status == 200   # not consumed by the failure


def start_device(fake):
    r = fake.oauth("devicecode", {"client_id": "cid", "scope": "Files.Read offline_access"})
    assert r.status == 200, r
    d = r.json()
    for k in ("device_code", "user_code", "verification_uri", "expires_in", "interval", "message"):
        assert k in d
    return d


def poll(fake, d):
    return fake.oauth("token", {"grant_type": GRANT_DEVICE, "client_id": "cid",
                                "device_code": d["device_code"]})


def test_device_code_pending_then_approved(fake_factory, tree):
    f = fake_factory("--data", tree[0], "--device-interval", "0")
    d = start_device(f)
    r = poll(f, d)
    assert r.status == 400 and r.json()["error"] == "authorization_pending"
    codes = f.admin("devicecode")["codes"]
    assert codes[-1]["user_code"] == d["user_code"] and codes[-1]["state"] == "pending"
    f.admin("devicecode/approve", {"user_code": d["user_code"]})
    r = poll(f, d)
    assert r.status == 200
    tok = r.json()
    assert f.get("/me/drive", token=tok["access_token"]).status == 200
    assert refresh(f, tok["refresh_token"]).status == 200
    # a device code is redeemed once
    assert poll(f, d).json()["error"] == "invalid_grant"


def test_device_code_slow_down_declined_expired(fake_factory, tree):
    f = fake_factory("--data", tree[0], "--device-interval", "5")
    d = start_device(f)
    assert d["interval"] == 5
    assert poll(f, d).json()["error"] == "authorization_pending"
    assert poll(f, d).json()["error"] == "slow_down"          # faster than the interval
    assert f.admin("devicecode")["codes"][-1]["interval"] == 10

    f.admin("auth", {"device_interval": 0})
    d = start_device(f)
    f.admin("devicecode/slow_down", {"device_code": d["device_code"], "count": 1})
    assert poll(f, d).json()["error"] == "slow_down"
    # the interval grew by 5 s (RFC 8628), and the fake holds the client to it
    assert f.admin("devicecode")["codes"][-1]["interval"] == 5
    assert poll(f, d).json()["error"] == "slow_down"
    f.admin("devicecode/decline", {"device_code": d["device_code"]})
    assert poll(f, d).json()["error"] == "authorization_declined"

    d = start_device(f)
    f.admin("devicecode/expire", {})                          # the newest pending one
    assert poll(f, d).json()["error"] == "expired_token"
    r = f.oauth("token", {"grant_type": GRANT_DEVICE, "client_id": "cid", "device_code": "nope"})
    assert r.json()["error"] == "bad_verification_code"


def test_device_code_lifetime(fake_factory, tree):
    f = fake_factory("--data", tree[0], "--device-interval", "0", "--device-lifetime", "1")
    d = start_device(f)
    assert d["expires_in"] == 1
    import time
    time.sleep(1.05)
    assert poll(f, d).json()["error"] == "expired_token"


def test_client_id_and_grant_checks(fake_factory, tree):
    f = fake_factory("--data", tree[0], "--client-id", "the-app")
    r = f.oauth("devicecode", {"client_id": "other"})
    assert r.status == 400 and r.json()["error"] == "unauthorized_client"
    r = f.oauth("token", {"grant_type": "password", "client_id": "the-app"})
    assert r.json()["error"] == "unsupported_grant_type"
    r = f.oauth("token", {"grant_type": "refresh_token"})
    assert r.json()["error"] == "invalid_request"
