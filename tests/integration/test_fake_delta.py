"""Conformance of the fake's delta: paging, opaque tokens, token=latest, incremental sets
with ancestors, renames/moves/deletes, both folder-deletion modes, folder scope, 410."""

import collections
import urllib.parse


def ids(items):
    return [it["id"] for it in items]


def by_name(items):
    return {it.get("name"): it for it in items}


def test_full_enumeration_pages_and_links(fake, tree):
    items, delta, pages = fake.delta_all("/me/drive/root/delta?$top=3")
    tree_items = fake.admin("tree")["items"]
    assert sorted(ids(items)) == sorted(t["id"] for t in tree_items)
    assert len(pages) == -(-len(tree_items) // 3)
    for p in pages[:-1]:
        assert "@odata.nextLink" in p and "@odata.deltaLink" not in p
        assert len(p["value"]) == 3                 # $top kept across nextLinks
    assert "@odata.deltaLink" in pages[-1] and "@odata.nextLink" not in pages[-1]
    assert delta.startswith(fake.login_url + "/v1.0/")
    root = [it for it in items if "root" in it]
    assert len(root) == 1
    # paths are not given in delta by default: rebuild from parentReference.id
    assert all("path" not in it["parentReference"] for it in items)
    # the same drive by /drives/{d}/root/delta and a folder by id
    items2, _, _ = fake.delta_all(f"/drives/{fake.drive_id}/root/delta")
    assert sorted(ids(items2)) == sorted(ids(items))


def test_links_keep_select(fake):
    pages, delta = fake.pages("/me/drive/root/delta?$top=4&$select=id,name,deleted,parentReference")
    for p in pages:
        for it in p["value"]:
            assert set(it) <= {"id", "name", "deleted", "parentReference"}
    assert "$select=id,name,deleted,parentReference" in urllib.parse.unquote(delta)


def test_token_latest_then_changes_with_ancestors(fake):
    latest = fake.get_json("/me/drive/root/delta?token=latest")
    assert latest["value"] == [] and "@odata.deltaLink" in latest
    fake.admin("items/modify", {"path": "/Docs/Reports/q1.txt", "content": "changed"})
    items, delta, _ = fake.delta_all(latest["@odata.deltaLink"])
    names = [it.get("name") for it in items]
    q1 = [it for it in items if it.get("name") == "q1.txt"]
    assert len(q1) == 1 and q1[0]["size"] == 7
    # ancestors up to the root, each once
    assert set(names) == {None, "Docs", "Reports", "q1.txt"}      # root has no name
    assert len(ids(items)) == len(set(ids(items)))
    # nothing changed since: an empty set
    again, _, _ = fake.delta_all(delta)
    assert again == []


def test_rename_twice_reported_once_same_id(fake):
    start = fake.get_json("/me/drive/root/delta?token=latest")["@odata.deltaLink"]
    before = fake.admin("item?path=/top.txt")
    fake.admin("items/rename", {"path": "/top.txt", "name": "middle.txt"})
    fake.admin("items/rename", {"path": "/middle.txt", "name": "final.txt"})
    items, _, _ = fake.delta_all(start)
    files = [it for it in items if "file" in it]
    assert len(files) == 1
    assert files[0]["id"] == before["id"] and files[0]["name"] == "final.txt"


def test_move_keeps_id_delete_recreate_new_id(fake):
    start = fake.get_json("/me/drive/root/delta?token=latest")["@odata.deltaLink"]
    photos = fake.admin("item?path=/Photos")
    q1 = fake.admin("item?path=/Docs/Reports/q1.txt")
    fake.admin("items/move", {"path": "/Docs/Reports/q1.txt", "parent_path": "/Photos"})
    readme = fake.admin("item?path=/Docs/readme.txt")
    fake.admin("items/delete", {"path": "/Docs/readme.txt"})
    new = fake.admin("items/add", {"path": "/Docs/readme.txt", "content": "again"})
    assert new["id"] != readme["id"]
    items, _, _ = fake.delta_all(start)
    moved = [it for it in items if it["id"] == q1["id"]]
    assert len(moved) == 1 and moved[0]["parentReference"]["id"] == photos["id"]
    tomb = [it for it in items if it["id"] == readme["id"]]
    assert len(tomb) == 1 and "deleted" in tomb[0]
    assert "size" not in tomb[0]                      # personal tombstones carry no size
    assert [it for it in items if it["id"] == new["id"]][0]["size"] == 5


def test_folder_delete_both_modes(fake):
    start = fake.get_json("/me/drive/root/delta?token=latest")["@odata.deltaLink"]
    reports = fake.admin("item?path=/Docs/Reports")
    fake.admin("items/delete", {"path": "/Docs/Reports", "child_tombstones": True})
    items, _, _ = fake.delta_all(start)
    tombs = {it["id"] for it in items if "deleted" in it}
    assert reports["id"] in tombs and len(tombs) == 3          # folder + 2 files

    start = fake.get_json("/me/drive/root/delta?token=latest")["@odata.deltaLink"]
    fake.faults(child_tombstones=False)
    photos = fake.admin("item?path=/Photos")
    fake.admin("items/delete", {"path": "/Photos"})
    items, _, _ = fake.delta_all(start)
    tombs = [it["id"] for it in items if "deleted" in it]
    assert tombs == [photos["id"]]                              # the folder only
    # gone from a full enumeration either way
    full, _, _ = fake.delta_all("/me/drive/root/delta")
    assert not [it for it in full if it.get("name") in ("img1.jpg", "q1.txt", "empty.jpg")]


def test_folder_scoped_delta(fake):
    docs = fake.admin("item?path=/Docs")
    items, delta, _ = fake.delta_all(f"/me/drive/items/{docs['id']}/delta")
    names = {it.get("name") for it in items}
    assert names == {"Docs", "Reports", "readme.txt", "q1.txt", "q2.bin", "a b#c%d+e.txt"}
    # path form of the same scope
    items2, _, _ = fake.delta_all("/me/drive/root:/Docs:/delta")
    assert sorted(ids(items2)) == sorted(ids(items))
    # a change outside the scope is not reported; moving an item out reports it deleted
    fake.admin("items/modify", {"path": "/top.txt", "content": "outside"})
    q1 = fake.admin("item?path=/Docs/Reports/q1.txt")
    fake.admin("items/move", {"id": q1["id"], "parent_path": "/"})
    changed, _, _ = fake.delta_all(delta)
    assert [it["id"] for it in changed if "deleted" in it] == [q1["id"]]
    assert "top.txt" not in {it.get("name") for it in changed}


def test_epoch_bump_410_also_mid_set(fake_factory):
    f = fake_factory("--synthetic", "30,16,3")
    pages = []
    first = f.get_json("/me/drive/root/delta?$top=5")
    delta_items, delta, _ = f.delta_all("/me/drive/root/delta?$top=100")
    f.admin("epoch", {})
    r = f.get(first["@odata.nextLink"])                 # in the middle of a set
    assert r.status == 410
    err = r.json()["error"]
    assert err["code"] == "resyncRequired"
    assert err["innerError"]["code"] == "resyncApplyDifferences"
    assert r.header("Location").startswith(f.login_url + "/v1.0/")
    r = f.get(delta)                                    # a saved deltaLink
    assert r.status == 410 and r.json()["error"]["code"] == "resyncRequired"
    # the Location link starts a fresh full enumeration
    items, _, _ = f.delta_all(r.header("Location"))
    assert len(items) == len(delta_items)
    assert f.stats()["resyncs"] == 2
    del pages


def test_token_age_410(fake_factory, tree):
    f = fake_factory("--data", tree[0], "--token-max-age", "0.05")
    _, delta, _ = f.delta_all("/me/drive/root/delta")
    # no sleep needed beyond the token's age: make it certainly older
    import time
    time.sleep(0.1)
    r = f.get(delta)
    assert r.status == 410 and r.json()["error"]["code"] == "resyncRequired"


def test_duplicates_shuffle_empty_and_short_pages(fake_factory):
    f = fake_factory("--synthetic", "40,8,4", "--faults",
                     '{"delta_duplicates":true,"delta_shuffle":true,"delta_empty_pages":true}')
    items, _, pages = f.delta_all("/me/drive/root/delta?$top=10")
    counts = collections.Counter(ids(items))
    tree_ids = {t["id"] for t in f.admin("tree")["items"]}
    assert set(counts) == tree_ids
    dups = [i for i, n in counts.items() if n > 1]
    assert dups, "duplicates switch produced no duplicate"
    # duplicates appear on a later page than the first occurrence
    page_of = collections.defaultdict(list)
    for n, p in enumerate(pages):
        for it in p["value"]:
            page_of[it["id"]].append(n)
    assert any(min(v) != max(v) for v in page_of.values())
    # empty pages that still carry a nextLink
    empties = [p for p in pages if not p["value"]]
    assert empties and all("@odata.nextLink" in p for p in empties)
    # shuffled: some child comes before its parent
    pos = {}
    for n, it in enumerate(items):
        pos.setdefault(it["id"], n)
    assert any(pos[it["parentReference"]["id"]] > pos[it["id"]]
               for it in items if "id" in it.get("parentReference", {}))

    f.faults(clear=True, delta_short_pages=True)
    items, _, pages = f.delta_all("/me/drive/root/delta?$top=10")
    assert sorted(set(ids(items))) == sorted(tree_ids)
    assert len(items) == len(tree_ids)                   # clear removed the duplicates
    assert any(0 < len(p["value"]) < 10 for p in pages[:-1])


def test_not_supported_for_folder_scope(fake):
    fake.faults(folder_delta_not_supported=True)
    r = fake.get("/me/drive/root:/Docs:/delta")
    assert r.status == 501 and r.json()["error"]["code"] == "notSupported"
    assert fake.get("/me/drive/root/delta").status == 200
    fake.faults(folder_delta_not_supported=400)
    assert fake.get("/me/drive/root:/Docs:/delta").status == 400


def test_hash_switches(fake):
    empty = fake.get_json("/me/drive/root:/Photos/empty.jpg:")
    assert "quickXorHash" in empty["file"]["hashes"]
    assert "sha1Hash" in empty["file"]["hashes"]
    fake.faults(no_hash_empty=True, no_sha=True)
    empty = fake.get_json("/me/drive/root:/Photos/empty.jpg:")
    assert "hashes" not in empty["file"]
    q1 = fake.get_json("/me/drive/root:/Docs/Reports/q1.txt:")
    assert set(q1["file"]["hashes"]) == {"quickXorHash"}


def test_mixed_case_drive_id_and_delta_paths(fake):
    fake.faults(mixed_case_drive_id=True, delta_paths=True)
    items, _, _ = fake.delta_all("/me/drive/root/delta")
    q1 = [it for it in items if it.get("name") == "q1.txt"][0]
    assert q1["parentReference"]["driveId"] == fake.drive_id.upper()
    assert q1["parentReference"]["path"] == "/drive/root:/Docs/Reports"
