"""Conformance of the fake's fault injection: 429/503 with Retry-After and throttle
violations, 5xx, rules by count/every/probability/route, latency, bandwidth caps, broken
download bodies."""

import http.client
import time
import urllib.parse

import pytest

from conftest import request


def test_429_retry_after_and_violations(fake):
    fake.faults(throttle_grace=0, errors=[{"status": 429, "route": "delta", "retry_after": 1}])
    r = fake.get("/me/drive/root/delta")
    assert r.status == 429
    assert r.header("Retry-After") == "1"
    assert r.json()["error"]["code"] == "activityLimitReached"
    # the rule fired once; the next call succeeds but came inside the window
    assert fake.get("/me/drive").status == 200
    st = fake.stats()
    assert st["throttled"] == 1 and st["throttle_violations"] == 1
    # waiting what the server asked for is no violation
    time.sleep(1.05)
    assert fake.get("/me/drive/root/delta").status == 200
    assert fake.stats()["throttle_violations"] == 1


def test_grace_forgives_calls_already_on_the_wire(fake):
    fake.faults(throttle_grace=5, errors=[{"status": 503, "retry_after": 30}])
    r = fake.get("/me/drive")
    assert r.status == 503 and r.header("Retry-After") == "30"
    assert r.json()["error"]["code"] == "serviceNotAvailable"
    fake.get("/me/drive")
    assert fake.stats()["throttle_violations"] == 0


def test_503_every_nth_and_without_header(fake):
    fake.faults(errors=[{"status": 503, "route": "children", "every": 2, "count": -1, "retry_after": -1}])
    statuses = [fake.get("/me/drive/root/children").status for _ in range(6)]
    assert statuses == [200, 503, 200, 503, 200, 503]
    r = [fake.get("/me/drive/root/children") for _ in range(2)][1]
    assert r.status == 503 and r.header("Retry-After") is None
    assert fake.get("/me/drive").status == 200          # other routes untouched
    fake.faults(clear=True)
    assert fake.get("/me/drive/root/children").status == 200


@pytest.mark.parametrize("status,code", [(500, "generalException"), (502, "badGateway"),
                                         (504, "gatewayTimeout"), (509, "bandwidthLimitExceeded")])
def test_server_errors(fake, status, code):
    fake.faults(errors=[{"status": status, "count": 2}])
    assert [fake.get("/me/drive/root").status for _ in range(3)] == [status, status, 200]
    fake.faults(errors=[{"status": status}])
    assert fake.get("/me/drive/root").json()["error"]["code"] == code
    assert fake.stats()["statuses"][str(status)] == 3


def test_rule_codes_probability_and_item_filter(fake):
    q1 = fake.admin("item?path=/Docs/Reports/q1.txt")["id"]
    fake.faults(errors=[{"status": 500, "route": "item", "item_id": q1, "inner_code": "cannotSnapshotTree"}])
    assert fake.get("/me/drive/root:/Docs/readme.txt:").status == 200
    r = fake.get(f"/me/drive/items/{q1}")
    assert r.status == 500 and r.json()["error"]["innerError"]["code"] == "cannotSnapshotTree"
    fake.faults(errors=[{"status": 503, "probability": 1.0, "count": 3}])
    assert [fake.get("/me/drive").status for _ in range(4)] == [503, 503, 503, 200]
    fake.faults(errors=[{"status": 503, "probability": 0.5, "count": -1, "retry_after": 0}])
    got = [fake.get("/me/drive").status for _ in range(40)]
    assert 0 < got.count(503) < 40
    r = request(f"{fake.admin_url}/faults", "POST", {}, b'{"errors":[{"status":200}]}')
    assert r.status == 400
    r = request(f"{fake.admin_url}/faults", "POST", {}, b'{"latency_ms":7,"latncy_ms":1}')
    assert r.status == 400 and "latncy_ms" in r.json()["error"]
    assert fake.admin("faults")["latency_ms"] == 0          # all or nothing


def test_410_as_a_rule_on_delta(fake):
    _, delta, _ = fake.delta_all("/me/drive/root/delta")
    fake.faults(errors=[{"status": 410, "route": "delta"}])
    r = fake.get(delta)
    assert r.status == 410 and r.json()["error"]["code"] == "resyncRequired"


def test_faults_on_token_and_download_routes(fake):
    fake.faults(errors=[{"status": 503, "route": "token"}])
    r = fake.oauth("token", {"grant_type": "refresh_token", "client_id": "c", "refresh_token": "x"})
    assert r.status == 503 and r.json()["error"] == "temporarily_unavailable"
    fake.faults(errors=[{"status": 503, "route": "download", "retry_after": 2}])
    r, _ = fake.download("/top.txt")
    assert r.status == 503 and r.header("Retry-After") == "2"
    r, _ = fake.download("/top.txt")
    assert r.status == 200


def test_faults_from_the_command_line(fake_factory, tree):
    f = fake_factory("--data", tree[0], "--faults", '{"errors":[{"status":429,"retry_after":3}]}')
    r = f.get("/me/drive")
    assert r.status == 429 and r.header("Retry-After") == "3"
    assert f.admin("faults")["errors"] == []


def test_latency(fake_factory, tree):
    f = fake_factory("--data", tree[0], "--latency-ms", "300")
    t = time.monotonic()
    assert f.get("/me/drive").status == 200
    assert time.monotonic() - t >= 0.3
    f.faults(latency_ms=0, download_latency_ms=250)
    t = time.monotonic()
    r, _ = f.download("/top.txt")
    assert r.status == 200 and time.monotonic() - t >= 0.25


def test_bandwidth_cap_holds_downloads_in_flight(fake, tree):
    fake.faults(bandwidth_bps=10000)
    t = time.monotonic()
    r, _ = fake.download("/Docs/Reports/q2.bin")          # 10240 bytes at 10 kB/s
    assert r.status == 200 and r.body == tree[1]["Docs/Reports/q2.bin"]
    assert time.monotonic() - t >= 0.9
    assert fake.stats()["bytes_served"] == 10240


def raw_get(url):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", u.path)
    return conn, conn.getresponse()


@pytest.mark.parametrize("kind", ["reset", "truncate"])
def test_broken_bodies(fake, tree, kind):
    data = tree[1]["Docs/Reports/q2.bin"]
    q2 = fake.admin("item?path=/Docs/Reports/q2.bin")["id"]
    fake.faults(download_errors=[{"kind": kind, "after_bytes": 1000, "item_id": q2}])
    r, _ = fake.download("/top.txt")                      # another item: unaffected
    assert r.status == 200 and len(r.body) == 5000
    r = fake.get("/me/drive/root:/Docs/Reports/q2.bin:/content")
    conn, resp = raw_get(r.header("Location"))
    assert resp.status == 200
    assert int(resp.getheader("Content-Length")) == len(data)
    got = b""
    reset = False
    try:
        while True:
            # http.client returns b"" at a premature EOF on sized reads instead of raising
            chunk = resp.read(100)
            if not chunk:
                break
            got += chunk
    except http.client.IncompleteRead as e:
        got += e.partial
    except ConnectionResetError:
        reset = True
    conn.close()
    assert got == data[:len(got)]
    if kind == "truncate":
        assert len(got) == 1000 and not reset     # everything up to the cut, then a clean close
    else:
        assert reset and len(got) <= 1000         # a TCP RST
    # the rule was used up: the next download is whole
    r, _ = fake.download("/Docs/Reports/q2.bin")
    assert r.status == 200 and r.body == data


def test_lifting_the_cap_releases_downloads_in_flight(fake_factory):
    import threading
    f = fake_factory("--synthetic", "1,1M,0")
    f.faults(bandwidth_bps=20000)                       # 1 MiB would take ~52 s
    r = f.get("/me/drive/root:/file-000000.bin:/content")
    result = {}

    def fetch():
        result["r"] = request(r.header("Location"))

    t = threading.Thread(target=fetch)
    t0 = time.monotonic()
    t.start()
    deadline = time.monotonic() + 10
    while f.stats()["bytes_served"] == 0:              # in flight: the first chunks went out
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert t.is_alive()
    f.faults(bandwidth_bps=0)
    t.join(30)
    assert not t.is_alive()
    assert len(result["r"].body) == 1 << 20
    assert time.monotonic() - t0 < 20
