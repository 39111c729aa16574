"""Updates, deletes and exclusions seen through the mount; unmount, SIGTERM and SIGKILL during a
run; offline mounts; the daemon's exit codes."""

import errno
import os
import re
import signal
import subprocess

import pytest

from mount_fixture import TERMINAL, DAEMON, drive_dir, fake, mount, mounted_tree, remote_tree  # noqa: F401


def test_update_new_open_sees_new_bytes_old_fd_keeps_old(drive_dir, fake, mount):
    old = b"version one\n" * 1000
    (drive_dir / "doc.txt").write_bytes(old)
    mount.start()
    mount.sync_and_wait()
    path = mount.mnt / "doc.txt"
    f_old = open(path, "rb")
    assert f_old.read(10) == old[:10]
    new = b"the second, longer version\n" * 3000
    fake.modify("/doc.txt", new)
    mount.sync_and_wait()
    assert path.read_bytes() == new                 # a new open: new bytes
    assert os.stat(path).st_size == len(new)
    assert f_old.read() == old[10:]                 # the old fd: the old version, complete
    assert os.fstat(f_old.fileno()).st_size == len(old)
    f_old.close()
    mount.stop()


def test_remote_delete_and_rename(drive_dir, fake, mount):
    (drive_dir / "keep.txt").write_bytes(b"keep")
    (drive_dir / "gone.txt").write_bytes(b"gone")
    (drive_dir / "old-name.txt").write_bytes(b"renamed")
    mount.start()
    mount.sync_and_wait()
    assert (mount.mnt / "gone.txt").exists()
    fake.delete("/gone.txt")
    fake.rename("/old-name.txt", "new-name.txt")
    mount.sync_and_wait()
    assert not (mount.mnt / "gone.txt").exists()
    assert not (mount.mnt / "old-name.txt").exists()
    assert (mount.mnt / "new-name.txt").read_bytes() == b"renamed"
    assert sorted(os.listdir(mount.mnt)) == [".sync", "keep.txt", "new-name.txt"]
    mount.stop()


def test_cached_listings_follow_remote_changes(drive_dir, fake, mount):
    (drive_dir / "dir").mkdir()
    (drive_dir / "dir" / "a.txt").write_bytes(b"a")
    (drive_dir / "dir" / "b.txt").write_bytes(b"b")
    mount.start()
    mount.sync_and_wait()
    # Prime the kernel's caches: listings, entries, attributes.
    assert sorted(os.listdir(mount.mnt / "dir")) == ["a.txt", "b.txt"]
    assert sorted(os.listdir(mount.mnt)) == [".sync", "dir"]
    os.stat(mount.mnt / "dir" / "a.txt")
    fake.add("/dir/c.txt", b"c")
    fake.add_folder("/dir/sub")
    fake.add("/dir/sub/d.txt", b"d")
    fake.delete("/dir/b.txt")
    fake.add("/top.txt", b"top")
    mount.sync_and_wait()
    assert sorted(os.listdir(mount.mnt / "dir")) == ["a.txt", "c.txt", "sub"]
    assert sorted(os.listdir(mount.mnt / "dir" / "sub")) == ["d.txt"]
    assert sorted(os.listdir(mount.mnt)) == [".sync", "dir", "top.txt"]
    assert mounted_listing(mount.mnt) == remote_listing(fake)
    mount.stop()


def remote_listing(fake):
    """{mount-relative path: size or None for folders}, from the fake's own view of its drive."""
    return {i["path"].lstrip("/"): None if i["folder"] else i["size"]
            for i in fake.admin("tree")["items"] if i["path"] not in ("", "/")}


def mounted_listing(mnt):
    return {p: None if v is None else len(v) for p, v in mounted_tree(mnt).items()}


def test_partial_and_failed_files_never_visible(drive_dir, fake, mount):
    """A file is visible only once its verified bytes are in place: not while it downloads,
    not when its download keeps failing (a broken body, a server error)."""
    big = os.urandom(1024 * 1024 + 5)
    (drive_dir / "big.bin").write_bytes(big)
    (drive_dir / "ok.txt").write_bytes(b"fine")
    (drive_dir / "broken.txt").write_bytes(b"this body is cut short" * 100)
    (drive_dir / "erroring.txt").write_bytes(b"the server fails this one")
    ids = {i["path"]: i["id"] for i in fake.admin("tree")["items"]}
    fake.faults(bandwidth_bps=256 * 1024,
                errors=[{"status": 500, "route": "content", "count": -1, "item_id": ids["/erroring.txt"]}],
                download_errors=[{"kind": "truncate", "after_bytes": 100, "count": -1,
                                  "item_id": ids["/broken.txt"]}])
    mount.allowed.append(re.compile(r"odsf-(sync|graph)"))
    mount.start()
    mount.start_sync()
    seen_partial = []
    while mount.status()["state"] in ("idle", "syncing"):
        names = os.listdir(mount.mnt)
        assert "broken.txt" not in names and "erroring.txt" not in names
        if "big.bin" in names:
            data = (mount.mnt / "big.bin").read_bytes()
            if data != big:
                seen_partial.append(len(data))
    assert not seen_partial, f"partial big.bin seen: {seen_partial}"
    doc = mount.wait_status(lambda s: s["state"] in TERMINAL, 60)
    assert doc["state"] == "completed_with_errors"
    assert {f["path"] for f in doc["failed_files"]} == {"/broken.txt", "/erroring.txt"}
    assert sorted(os.listdir(mount.mnt)) == [".sync", "big.bin", "ok.txt"]
    assert not (mount.mnt / "broken.txt").exists()
    # Once the service behaves, the next run brings them, verified.
    fake.faults(clear=True)
    mount.sync_and_wait()
    assert mounted_tree(mount.mnt) == remote_tree(drive_dir)
    mount.stop()


def test_exclusion_by_rm_and_return(drive_dir, fake, mount):
    (drive_dir / "dir" / "sub").mkdir(parents=True)
    (drive_dir / "dir" / "sub" / "x.txt").write_bytes(b"x")
    (drive_dir / "single.txt").write_bytes(b"single")
    mount.start()
    mount.sync_and_wait()
    objects = mount.cache / "objects"
    n_objects = len(os.listdir(objects))
    os.unlink(mount.mnt / "single.txt")
    subprocess.run(["rm", "-r", mount.mnt / "dir"], check=True)
    assert sorted(os.listdir(mount.mnt)) == [".sync"]
    assert len(os.listdir(objects)) == n_objects - 2   # gone from the cache too
    # A later run does not bring them back; the remote still has them.
    mount.sync_and_wait()
    assert sorted(os.listdir(mount.mnt)) == [".sync"]
    assert (drive_dir / "single.txt").exists()
    mount.sync_and_wait("clear-exclusions")
    assert mounted_tree(mount.mnt) == remote_tree(drive_dir)
    mount.stop()


def slow(fake, drive_dir, files=16, size=512 * 1024):
    for i in range(files):
        (drive_dir / f"s{i:02}.bin").write_bytes(bytes([i + 1]) * size)


def downloads_per_item(fake):
    return {d["path"]: d["full"] + d["ranged"] for d in fake.stats()["downloads"].values()}


def test_unmount_during_run_then_resume(drive_dir, fake, mount):
    slow(fake, drive_dir)
    mount.start()
    fake.faults(bandwidth_bps=1024 * 1024)
    mount.start_sync()
    mount.wait_status(lambda s: s.get("files_processed", 0) >= 2, 60, "two files published")
    mount.stop()                          # fusermount3 -u during the run: exit 0
    fake.faults(bandwidth_bps=0)
    mount.start()
    mount.sync_and_wait()
    assert mounted_tree(mount.mnt) == remote_tree(drive_dir)
    # Nothing was downloaded twice to completion: a file counts once, plus at most a resume.
    for path, n in downloads_per_item(fake).items():
        assert n <= 2, f"{path} downloaded {n} times"
    mount.stop()


def test_sigterm_during_run(drive_dir, fake, mount):
    slow(fake, drive_dir, files=8)
    mount.start()
    fake.faults(bandwidth_bps=512 * 1024)
    mount.start_sync()
    mount.wait_status(lambda s: s["state"] == "syncing", 30)
    mount.signal(signal.SIGTERM)
    mount.wait_exit(30, expect=0)
    fake.faults(bandwidth_bps=0)
    mount.start()
    assert mount.status()["state"] == "cancelled"
    mount.sync_and_wait()
    assert mounted_tree(mount.mnt) == remote_tree(drive_dir)
    mount.stop()


def test_sigterm_with_files_open(drive_dir, fake, mount):
    """Files, folders and control files still open when the daemon stops: it exits 0 and
    (under ASan) frees every handle the kernel will never release."""
    (drive_dir / "f.txt").write_bytes(b"x" * 10000)
    mount.start()
    mount.sync_and_wait()
    f = open(mount.mnt / "f.txt", "rb")
    f.read(10)
    st = open(mount.sync / "status")
    ev = open(mount.sync / "events", "rb")
    d = os.open(mount.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        mount.signal(signal.SIGTERM)
        mount.wait_exit(30, expect=0)
    finally:
        f.close()
        st.close()
        ev.close()
        os.close(d)


def test_sigkill_during_run_then_remount(drive_dir, fake, mount):
    slow(fake, drive_dir, files=8)
    mount.start()
    fake.faults(bandwidth_bps=512 * 1024)
    mount.start_sync()
    mount.wait_status(lambda s: s.get("files_processed", 0) >= 1, 60)
    mount.kill()
    fake.faults(bandwidth_bps=0)
    mount.start()
    assert mount.status()["state"] == "interrupted"
    mount.sync_and_wait()
    assert mounted_tree(mount.mnt) == remote_tree(drive_dir)
    mount.stop()


def test_periodic_sync(drive_dir, fake, mount):
    (drive_dir / "p.txt").write_bytes(b"periodic")
    mount.options.append("sync_interval=1")
    mount.start()
    # Nobody writes .sync/start: the timer does.
    mount.wait_status(lambda s: s["state"] == "completed", 60, "a periodic run")
    assert (mount.mnt / "p.txt").read_bytes() == b"periodic"
    fake.add("/q.txt", b"later")
    mount.wait_status(lambda s: s["state"] == "completed" and (mount.mnt / "q.txt").exists(), 60,
                      "the next periodic run")
    mount.stop()


def test_offline_mount_serves_cache(drive_dir, fake, mount):
    (drive_dir / "cached.txt").write_bytes(b"from the cache")
    mount.start()
    mount.sync_and_wait()
    mount.stop()
    fake.close()                          # the service is gone
    mount.allowed.append(__import__("re").compile(r"odsf-(sync|graph)"))
    mount.start("sync_on_mount")
    assert (mount.mnt / "cached.txt").read_bytes() == b"from the cache"
    doc = mount.wait_status(lambda s: s["state"] in TERMINAL, 120, "the offline run to fail")
    assert doc["state"] == "failed"
    assert (mount.mnt / "cached.txt").read_bytes() == b"from the cache"
    mount.stop()


def run_daemon(mount, *args, env=None):
    return subprocess.run([str(DAEMON), "-f", *args], capture_output=True, text=True, timeout=30,
                          env=env or mount.env())


def test_exit_codes(drive_dir, fake, mount, tmp_path):
    base = f"graph_url={fake.graph_url},cache_dir={mount.cache},token_file={mount.token_file}"
    # Usage: a bad value.
    r = run_daemon(mount, "-o", base + ",workers=lots", str(mount.mnt))
    assert r.returncode == 2 and "workers" in r.stderr
    # No token file.
    r = run_daemon(mount, "-o", f"graph_url={fake.graph_url},cache_dir={mount.cache},token_file={tmp_path}/none.json",
                   str(mount.mnt))
    assert r.returncode == 3 and "token" in r.stderr
    # Mount point missing.
    r = run_daemon(mount, "-o", base, str(tmp_path / "no-such-dir"))
    assert r.returncode == 4 and "no-such-dir" in r.stderr
    # Mount point busy.
    mount.start()
    r = run_daemon(mount, "-o", base.replace(str(mount.cache), str(tmp_path / "cache2")), str(mount.mnt))
    assert r.returncode == 4 and "busy" in r.stderr
    mount.stop()
    # --help and --version.
    assert run_daemon(mount, "--help").returncode == 0
    v = run_daemon(mount, "--version")
    assert v.returncode == 0 and "onedrive-syncfs" in v.stdout


def test_cache_on_full_disk(drive_dir, fake, mount, tmp_path):
    """Exit code 5 when the cache directory's disk is full; needs root to mount a tiny tmpfs."""
    small = tmp_path / "small"
    small.mkdir()
    if os.getuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                                          capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        r = run_daemon(mount, "-o", f"graph_url={fake.graph_url},cache_dir={small}/cache,token_file={mount.token_file}",
                       str(mount.mnt))
        assert r.returncode == 5, r.stderr
        assert "full disk" in r.stderr
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
