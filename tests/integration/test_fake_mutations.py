"""Conformance of the fake's admin mutations (reflected in items, downloads and the next
delta), the Business flavour, synthetic drives, TLS and the command line."""

import json
import shutil
import subprocess

import pytest

import conftest
from conftest import FAKE_GRAPH, quickxor, request


def test_modify_is_reflected_everywhere(fake):
    start = fake.get_json("/me/drive/root/delta?token=latest")["@odata.deltaLink"]
    before = fake.get_json("/me/drive/root:/Docs/readme.txt:")
    _, old_url = fake.download("/Docs/readme.txt")
    res = fake.admin("items/modify", {"path": "/Docs/readme.txt", "content": "new content!", "mtime": 1700000000})
    assert res["size"] == 12 and res["quickXorHash"] == quickxor(b"new content!")
    after = fake.get_json("/me/drive/root:/Docs/readme.txt:")
    assert after["id"] == before["id"]
    assert after["eTag"] != before["eTag"] and after["cTag"] != before["cTag"]
    assert after["file"]["hashes"]["quickXorHash"] == quickxor(b"new content!")
    assert after["lastModifiedDateTime"].startswith("2023-11-14T22:13:20")
    r, _ = fake.download("/Docs/readme.txt")
    assert r.body == b"new content!"
    # a URL issued for the old content is refused: ask /content again
    assert request(old_url).status == 404
    items, _, _ = fake.delta_all(start)
    mod = [it for it in items if it["id"] == before["id"]]
    assert len(mod) == 1 and mod[0]["size"] == 12
    # folder sizes follow
    assert fake.get_json("/me/drive/root:/Docs")["size"] == 12 + 11 + 10240 + 43


def test_add_generated_content_and_errors(fake):
    a = fake.admin("items/add", {"path": "/New/Deep/gen.bin", "size": 70000, "seed": 7, "parents": True})
    b = fake.admin("items/add", {"path": "/New/gen2.bin", "size": 70000, "seed": 7})
    assert a["quickXorHash"] == b["quickXorHash"]           # deterministic from the seed
    c = fake.admin("items/add", {"parent_path": "/New", "name": "gen3.bin", "size": 70000, "seed": 8})
    assert c["quickXorHash"] != a["quickXorHash"]
    r, _ = fake.download(a["id"])
    assert len(r.body) == 70000 and quickxor(r.body) == a["quickXorHash"]
    fake.admin("items/add", {"path": "/New/GEN2.BIN", "content": "x"}, expect=409)   # names ignore case
    fake.admin("items/add", {"path": "/Nowhere/x.txt", "content": "x"}, expect=404)
    fake.admin("items/add", {"parent_id": a["id"], "name": "x", "content": "x"}, expect=404)
    fake.admin("items/rename", {"path": "/New/nothing", "name": "y"}, expect=404)
    fake.admin("items/move", {"path": "/New", "parent_path": "/New/Deep"}, expect=400)   # into itself
    folder = fake.admin("items/add", {"path": "/Empty2", "folder": True})
    assert "folder" in folder["item"]
    b64 = fake.admin("items/add", {"path": "/b64.bin", "content_base64": "Sg=="})
    assert b64["quickXorHash"] == "SgAAAAAAAAAAAAAAAQAAAAAAAAA="


def test_touch_and_initial_tombstones(fake):
    start = fake.get_json("/me/drive/root/delta?token=latest")["@odata.deltaLink"]
    fake.admin("items/touch", {"path": "/top.txt"})
    items, _, _ = fake.delta_all(start)
    assert "top.txt" in [it.get("name") for it in items]
    gone = fake.admin("items/delete", {"path": "/top.txt"})
    fake.faults(initial_tombstones=True)
    full, _, _ = fake.delta_all("/me/drive/root/delta")
    tomb = [it for it in full if it["id"] == gone["id"]]
    assert len(tomb) == 1 and "deleted" in tomb[0]
    # the admin API still finds the tombstone by id
    assert fake.admin(f"item?id={gone['id']}")["deleted"] is True


def test_business_flavour(fake_factory, tree):
    f = fake_factory("--data", tree[0], "--flavour", "business")
    d = f.get_json("/me/drive")
    assert d["driveType"] == "business" and d["id"].startswith("b!")
    it = f.get_json("/me/drive/root:/Docs/readme.txt:")
    assert it["id"].startswith("01") and len(it["id"]) == 34 and "!" not in it["id"]
    assert it["eTag"].startswith('"{') and it["eTag"].endswith('"') and "}," in it["eTag"]
    assert it["cTag"].startswith('"c:{')
    assert "." not in it["lastModifiedDateTime"]          # no fraction
    assert f.get_json(f"/drives/{d['id']}/items/{it['id']}")["id"] == it["id"]
    start = f.get_json("/me/drive/root/delta?token=latest")["@odata.deltaLink"]
    f.admin("items/delete", {"id": it["id"]})
    items, _, _ = f.delta_all(start)
    tomb = [x for x in items if x["id"] == it["id"]][0]
    assert "deleted" in tomb and "name" not in tomb and tomb["size"] == 0


def test_synthetic_is_deterministic_from_the_seed(fake_factory):
    a = fake_factory("--synthetic", "20,3k,2,42")
    b = fake_factory("--synthetic", "20,3k,2,42")
    c = fake_factory("--synthetic", "20,3k,2,43")
    ta, tb, tc = (sorted((t["path"], t.get("quickXorHash")) for t in x.admin("tree")["items"]) for x in (a, b, c))
    assert ta == tb and ta != tc
    files = [t for t in ta if t[0].endswith(".bin")]
    assert len(files) == 20 and len({h for _, h in files}) == 20      # distinct content
    r, _ = a.download("/folder-0001/file-000003.bin")
    assert len(r.body) == 3072 and quickxor(r.body) == dict(ta)["/folder-0001/file-000003.bin"]


@pytest.mark.parametrize("size", [0, 1, 161, 2000])
def test_synthetic_hashes_match_bytes(fake_factory, size):
    # The fake derives the hashes of synthetic files from each other (sliding window);
    # check every one against the bytes it serves.
    f = fake_factory("--synthetic", f"9,{size},0,5")
    bodies = set()
    for t in f.admin("tree")["items"]:
        if t["folder"]:
            continue
        r, _ = f.download(t["path"])
        assert len(r.body) == size
        assert quickxor(r.body) == t["quickXorHash"], t["path"]
        bodies.add(r.body)
    assert len(bodies) == (1 if size == 0 else 9)


def test_command_line_errors():
    for args in (["--synthetic", "1,2"], [], ["--data", "/nonexistent-dir"], ["--flavour", "x", "--synthetic", "1,1,1"],
                 ["--synthetic", "1,1,1", "--listen", "999.1.1.1:0"], ["--synthetic", "1,1,1", "--faults", "{nope"]):
        p = subprocess.run([FAKE_GRAPH, *args], capture_output=True, timeout=30)
        assert p.returncode != 0, args
        assert p.stdout == b""
        assert b"fake-graph:" in p.stderr


def test_ipv6_loopback(fake_factory):
    import socket
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    f = fake_factory("--synthetic", "1,10,0", "--listen", "[::1]:0", "--download-listen", "[::1]:0")
    assert f.graph_url.startswith("http://[::1]:")
    r, _ = f.download("/file-000000.bin")
    assert r.status == 200 and len(r.body) == 10


def test_tls(fake_factory, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    feats = json.loads(subprocess.run([FAKE_GRAPH, "--features"], capture_output=True, check=True).stdout)
    if not feats["tls"]:
        pytest.skip("this libmicrohttpd has no TLS support")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    f = fake_factory("--synthetic", "2,4k,1", "--tls", str(cert), str(key))
    assert f.graph_url.startswith("https://") and f.download_url.startswith("https://")
    assert f.ready["tls"] is True
    conftest.CAFILE["path"] = str(cert)
    try:
        assert f.get_json("/me/drive")["id"] == f.drive_id
        r, _ = f.download("/folder-0000/file-000000.bin")
        assert r.status == 200 and len(r.body) == 4096
    finally:
        conftest.CAFILE["path"] = None


def test_shared_folder_lives_on_the_remote_drive(fake):
    tree = fake.admin("tree")
    remote_drive = tree["remote_drive_id"]
    assert fake.ready["remote_drive_id"] == remote_drive != fake.drive_id
    shared = fake.admin("items/add", {"path": "/Shared", "remote": True})
    inner = fake.admin("items/add", {"path": "/Shared/Sub/inner.txt", "content": "remote bytes", "parents": True})
    start = fake.get_json("/me/drive/root/delta?token=latest")["@odata.deltaLink"]
    full, _, _ = fake.delta_all("/me/drive/root/delta")
    sc = [it for it in full if it["id"] == shared["id"]]
    assert len(sc) == 1
    assert sc[0]["remoteItem"]["id"] == shared["id"]
    assert sc[0]["remoteItem"]["parentReference"]["driveId"] == remote_drive
    # the contents are not in the user's drive delta ...
    assert inner["id"] not in [it["id"] for it in full]
    # ... but in a delta on the remote drive, where they name the remote drive
    items, rdelta, _ = fake.delta_all(f"/drives/{remote_drive}/items/{shared['id']}/delta")
    got = {it.get("name"): it for it in items}
    assert set(got) == {"Shared", "Sub", "inner.txt"}
    assert got["inner.txt"]["parentReference"]["driveId"] == remote_drive
    assert f"/drives/{remote_drive}/" in rdelta
    # a change inside shows only there
    fake.admin("items/modify", {"id": inner["id"], "content": "changed remotely"})
    mine, _, _ = fake.delta_all(start)
    assert inner["id"] not in [it["id"] for it in mine]
    theirs, _, _ = fake.delta_all(rdelta)
    assert [it["size"] for it in theirs if it["id"] == inner["id"]] == [16]
    r, _ = fake.download(inner["id"])
    assert r.body == b"changed remotely"


def test_package_items(fake):
    nb = fake.admin("items/add", {"path": "/Notebook", "package": "oneNote", "content": "x"})
    it = fake.get_json(f"/me/drive/items/{nb['id']}")
    assert it["package"] == {"type": "oneNote"}
    assert "file" not in it and "folder" not in it


def test_foreign_links(fake_factory):
    f = fake_factory("--synthetic", "5,1,0")
    f.faults(link_base="http://graph.example.invalid")
    page = f.get_json("/me/drive/root/delta?$top=2")
    assert page["@odata.nextLink"].startswith("http://graph.example.invalid/v1.0/")
    kids = f.get_json("/me/drive/root/children?$top=2")
    assert kids["@odata.nextLink"].startswith("http://graph.example.invalid/v1.0/")
    f.faults(link_base=None)
    assert f.get_json("/me/drive/root/delta?$top=2")["@odata.nextLink"].startswith(f.login_url)
