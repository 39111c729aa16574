"""Conformance of the fake Graph server: drive, items, path addressing, children paging,
auth, downloads (302, the no-Authorization rule, Range), hashes and stats."""

import base64
import urllib.parse

from conftest import quickxor, request


def test_quickxor_oracle_matches_protocol_vectors():
    vectors = {
        b"": "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        b"hello": "aCgDG9jwBgAAAAAABQAAAAAAAAA=",
        b"hello world": "aCgDG9jwBhDc4Q1yawMZAAAAAAA=",
        b"The quick brown fox jumps over the lazy dog": "bMSlbysmxJL6S75XwfMcQZOpcr4=",
        bytes(1000): "AAAAAAAAAAAAAAAA6AMAAAAAAAA=",
        bytes(range(256)): "QkGEfSisZcA7k+FCh71r2dbCayY=",
        base64.b64decode("2fuxhBJXtpWFe8dOfdGeHw=="): "O9tHLAghgSvYohKFyMMxnNCHaHg=",
    }
    for data, want in vectors.items():
        assert quickxor(data) == want


def test_ready_line_and_drive(fake):
    assert fake.graph_url.startswith("http://127.0.0.1:")
    assert fake.graph_url.endswith("/v1.0")
    assert fake.download_url != fake.login_url
    d = fake.get_json("/me/drive")
    assert d["id"] == fake.drive_id
    assert d["driveType"] == "personal"
    assert d["quota"]["used"] > 0
    # /drives/{d} answers the same drive, with the id in any case
    assert fake.get_json(f"/drives/{fake.drive_id.upper()}")["id"] == fake.drive_id
    assert fake.get(f"/drives/nosuchdrive/root").status == 404


def test_auth_required_and_checked(fake):
    r = fake.get("/me/drive", token=False)
    assert r.status == 401
    assert r.json()["error"]["code"] == "InvalidAuthenticationToken"
    r = fake.get("/me/drive", token="not-a-token")
    assert r.status == 401
    assert r.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert fake.stats()["auth_failures"] == 2


def test_root_item_and_ids(fake):
    root = fake.get_json("/me/drive/root")
    assert root["id"] == fake.root_id
    assert "root" in root and "folder" in root
    assert "id" not in root["parentReference"]
    assert fake.get_json(f"/me/drive/items/{fake.root_id}")["id"] == fake.root_id
    assert fake.get_json("/me/drive/items/root")["id"] == fake.root_id
    r = fake.get("/me/drive/items/NOPE!999")
    assert r.status == 404 and r.json()["error"]["code"] == "itemNotFound"


def test_path_addressing_decodes_and_ignores_case(fake, tree):
    # '#' as %23, '%' as %25, ' ' as %20, and '+' is a literal plus; case-insensitive lookup
    it = fake.get_json("/me/drive/root:/docs/A%20B%23C%25D+E.TXT:")
    assert it["name"] == "a b#c%d+e.txt"           # case preserved
    assert it["size"] == len(tree[1]["Docs/a b#c%d+e.txt"])
    same = fake.get_json(f"/drives/{fake.drive_id}/root:/Docs/a%20b%23c%25d%2Be.txt")
    assert same["id"] == it["id"]
    kids = fake.get_json("/me/drive/root:/Docs/Reports:/children")
    assert sorted(k["name"] for k in kids["value"]) == ["q1.txt", "q2.bin"]
    r = fake.get("/me/drive/root:/Docs/missing.txt:")
    assert r.status == 404 and r.json()["error"]["code"] == "itemNotFound"
    # A space written as '+' is a plus, not a space: no such file
    assert fake.get("/me/drive/root:/Docs/a+b%23c%25d%2Be.txt:").status == 404
    # relative to an item id
    docs = fake.get_json("/me/drive/root:/Docs")
    q1 = fake.get_json(f"/me/drive/items/{docs['id']}:/Reports/q1.txt:")
    assert q1["name"] == "q1.txt"


def test_item_fields(fake, tree):
    it = fake.get_json("/me/drive/root:/Docs/Reports/q1.txt:")
    assert it["file"]["hashes"]["quickXorHash"] == quickxor(b"hello world")
    assert it["parentReference"]["driveId"] == fake.drive_id
    assert it["parentReference"]["path"] == "/drive/root:/Docs/Reports"
    assert it["eTag"] and it["cTag"]
    assert it["@microsoft.graph.downloadUrl"].startswith(fake.download_url)
    assert it["fileSystemInfo"]["lastModifiedDateTime"].endswith("Z")
    assert "!" in it["id"]                               # personal id style
    folder = fake.get_json("/me/drive/root:/Docs")
    assert folder["folder"]["childCount"] == 3
    assert folder["size"] == sum(len(v) for k, v in tree[1].items() if k.startswith("Docs/"))
    sel = fake.get_json("/me/drive/root:/Docs/readme.txt:?$select=id,name")
    assert set(sel) <= {"id", "name", "@microsoft.graph.downloadUrl"}


def test_children_paging_with_top(fake_factory):
    f = fake_factory("--synthetic", "25,10,1")
    folder = f.get_json("/me/drive/root:/folder-0000")
    pages, _ = f.pages(f"/me/drive/items/{folder['id']}/children?$top=7&$select=id,name")
    assert [len(p["value"]) for p in pages] == [7, 7, 7, 4]
    for p in pages[:-1]:
        link = p["@odata.nextLink"]
        assert link.startswith(f.login_url + "/v1.0/")   # absolute
        assert "$select=id,name" in urllib.parse.unquote(link)
    names = [it["name"] for p in pages for it in p["value"]]
    assert names == sorted(f"file-{i:06d}.bin" for i in range(25))
    assert set(pages[0]["value"][0]) <= {"id", "name", "@microsoft.graph.downloadUrl"}
    # default page size 200, $top capped at 1000
    assert len(f.get_json(f"/me/drive/items/{folder['id']}/children")["value"]) == 25
    assert f.get(f"/me/drive/items/{folder['id']}/children?$top=0").status == 400


def test_content_redirects_to_download_host(fake, tree):
    r, loc = fake.download("/Docs/Reports/q1.txt")
    assert r.status == 200
    assert r.body == b"hello world"
    # the download host is another port and needs no Authorization
    assert urllib.parse.urlsplit(loc).port != urllib.parse.urlsplit(fake.graph_url).port
    # ... and refuses a request that carries one
    r2 = request(loc, "GET", {"Authorization": f"Bearer {fake.token}"})
    assert r2.status == 401
    # a forged URL is refused
    assert request(loc[:-4] + "0000").status == 403


def test_download_urls_expire(fake_factory, tree):
    f = fake_factory("--data", tree[0], "--download-url-ttl", "0")
    r, loc = f.download("/top.txt")
    assert r.status == 403
    assert "expired" in r.json()["error"]["message"]


def test_hashes_match_bytes_served(fake, tree):
    items, _, _ = fake.delta_all("/me/drive/root/delta")
    files = [it for it in items if "file" in it]
    assert len(files) == len(tree[1])
    for it in files:
        r, _ = fake.download(it["id"])
        assert r.status == 200
        assert quickxor(r.body) == it["file"]["hashes"]["quickXorHash"], it["name"]
        assert len(r.body) == it["size"]


def test_range_requests(fake, tree):
    data = tree[1]["Docs/Reports/q2.bin"]
    _, loc = fake.download("/Docs/Reports/q2.bin")
    r = request(loc, "GET", {"Range": "bytes=100-199"})
    assert r.status == 206
    assert r.header("Content-Range") == f"bytes 100-199/{len(data)}"
    assert r.body == data[100:200]
    r = request(loc, "GET", {"Range": "bytes=10000-"})
    assert r.status == 206 and r.body == data[10000:]
    r = request(loc, "GET", {"Range": "bytes=-10"})
    assert r.status == 206 and r.body == data[-10:]
    r = request(loc, "GET", {"Range": f"bytes={len(data)}-"})
    assert r.status == 416
    assert r.header("Content-Range") == f"bytes */{len(data)}"
    # the switch that makes the server ignore Range
    fake.faults(ignore_range=True)
    r = request(loc, "GET", {"Range": "bytes=100-199"})
    assert r.status == 200 and r.body == data
    st = fake.stats()
    q2 = fake.admin("item?path=/Docs/Reports/q2.bin")["id"]
    assert st["downloads"][q2]["ranged"] == 3
    assert st["downloads"][q2]["full"] == 2       # the first download + the ignored Range
    assert st["downloads"][q2]["bytes"] == len(data) * 2 + 100 + (len(data) - 10000) + 10


def test_stats_counts_routes_and_bytes(fake, tree):
    fake.get_json("/me/drive")
    fake.get_json("/me/drive/root/children")
    fake.download("/top.txt")
    st = fake.stats()
    assert st["requests"]["me_drive"] == 1
    assert st["requests"]["children"] == 1
    assert st["requests"]["content"] == 1
    assert st["requests"]["download"] == 1
    assert st["bytes_served"] == 5000
    assert st["full_downloads"] == 1
    fake.admin("stats/reset", {})
    assert fake.stats()["bytes_served"] == 0
