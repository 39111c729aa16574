"""The mirrored tree: equal to the remote after a sync, read-only, sources at their drive paths,
large files under many concurrent readers, a remote `.sync` folder."""

import errno
import hashlib
import os
import subprocess
import threading

import pytest

from mount_fixture import Mount, drive_dir, fake, mount, mounted_tree, remote_tree  # noqa: F401


def fill_drive(root):
    (root / "Documents" / "Reports").mkdir(parents=True)
    (root / "Documents" / "Reports" / "q1.txt").write_bytes(b"first quarter\n")
    (root / "Documents" / "Reports" / "empty.txt").write_bytes(b"")
    (root / "Documents" / "notes with spaces #1.md").write_bytes(b"# notes\n" * 100)
    (root / "Documents" / "caf\u00e9 \u65e5\u672c.txt").write_bytes("unicode name\n".encode())
    (root / "Pictures").mkdir()
    (root / "Pictures" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "Empty folder").mkdir()
    for i in range(40):
        (root / "Documents" / f"file-{i:03}.txt").write_bytes(f"file {i}\n".encode() * (i + 1))


def test_tree_and_bytes_equal_remote(drive_dir, fake, mount):
    fill_drive(drive_dir)
    mount.start()
    doc = mount.sync_and_wait()
    assert doc["files_failed"] == 0
    assert mounted_tree(mount.mnt) == remote_tree(drive_dir)

    # find, stat and ls -l agree with the remote: names, kinds, sizes.
    found = subprocess.run(["find", ".", "-not", "-path", "./.sync*"], cwd=mount.mnt,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    expected = {"."} | {"./" + p for p in remote_tree(drive_dir)}
    assert set(filter(None, found)) == expected
    for rel, content in remote_tree(drive_dir).items():
        st = os.stat(mount.mnt / rel)
        if content is None:
            assert (st.st_mode & 0o170000) == 0o040000
        else:
            assert st.st_size == len(content), rel
            assert st.st_blocks * 512 >= st.st_size
    ls = subprocess.run(["ls", "-l", "--time-style=+%s", mount.mnt / "Pictures"], capture_output=True,
                        text=True, check=True).stdout
    assert f" {3 * 1024 * 1024 + 17} " in ls and "big.bin" in ls

    # Stable inode numbers while nothing changes, across lookups and a remount.
    ino = os.stat(mount.mnt / "Documents" / "Reports" / "q1.txt").st_ino
    assert os.stat(mount.mnt / "Documents" / "Reports" / "q1.txt").st_ino == ino
    mount.stop()
    mount.start()
    assert os.stat(mount.mnt / "Documents" / "Reports" / "q1.txt").st_ino == ino
    assert mounted_tree(mount.mnt) == remote_tree(drive_dir)   # served from the cache
    mount.stop()


def test_read_only(drive_dir, fake, mount):
    (drive_dir / "a.txt").write_bytes(b"abc")
    (drive_dir / "d").mkdir()
    mount.start()
    mount.sync_and_wait()
    m = mount.mnt
    attempts = {
        "open for write": lambda: open(m / "a.txt", "r+b"),
        "append": lambda: open(m / "a.txt", "ab"),
        "create": lambda: open(m / "new.txt", "wb"),
        "mkdir": lambda: os.mkdir(m / "newdir"),
        "rename": lambda: os.rename(m / "a.txt", m / "b.txt"),
        "chmod": lambda: os.chmod(m / "a.txt", 0o600),
        "truncate": lambda: os.truncate(m / "a.txt", 0),
        "symlink": lambda: os.symlink("a.txt", m / "link"),
        "utime": lambda: os.utime(m / "a.txt", (1, 1)),
    }
    for what, op in attempts.items():
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.EROFS, what
    assert (m / "a.txt").read_bytes() == b"abc"

    st = os.statvfs(m)
    assert st.f_bsize > 0 and st.f_blocks * st.f_frsize >= 3
    assert st.f_namemax == 255
    mount.stop()


def test_sources_at_drive_path(drive_dir, fake, mount):
    fill_drive(drive_dir)
    mount.options.append("source=/Documents/Reports")
    mount.start()
    assert os.listdir(mount.mnt) == [".sync"]   # listed (and cached) before the first sync
    mount.sync_and_wait()
    assert sorted(os.listdir(mount.mnt)) == [".sync", "Documents"]
    assert os.listdir(mount.mnt / "Documents") == ["Reports"]   # synthetic: only the way down
    assert sorted(os.listdir(mount.mnt / "Documents" / "Reports")) == ["empty.txt", "q1.txt"]
    assert (mount.mnt / "Documents" / "Reports" / "q1.txt").read_bytes() == b"first quarter\n"
    mount.stop()


def test_include_exclude_globs(drive_dir, fake, mount):
    fill_drive(drive_dir)
    (drive_dir / "Documents" / "scratch.tmp").write_bytes(b"temporary")
    mount.options += ["exclude=*.tmp", "exclude=/Pictures/*"]
    mount.start()
    doc = mount.sync_and_wait()
    filtered = {f["path"]: f["reason"] for f in doc["filtered_files"]}
    assert filtered.get("/Documents/scratch.tmp") == "excluded"
    assert filtered.get("/Pictures/big.bin") == "excluded"
    assert not (mount.mnt / "Documents" / "scratch.tmp").exists()
    assert not (mount.mnt / "Pictures" / "big.bin").exists()
    assert (mount.mnt / "Documents" / "Reports" / "q1.txt").read_bytes() == b"first quarter\n"
    mount.stop()


def test_many_concurrent_readers(drive_dir, fake, mount):
    data = os.urandom(24 * 1024 * 1024 + 4097)
    (drive_dir / "large.bin").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    mount.start()
    mount.sync_and_wait()

    errors = []

    def reader(chunk, start):
        try:
            h = hashlib.sha256()
            with open(mount.mnt / "large.bin", "rb", buffering=0) as f:
                if start:   # some readers begin in the middle and wrap around
                    f.seek(start)
                    tail = b""
                    while (b := f.read(chunk)):
                        tail += b
                    f.seek(0)
                    head = f.read(start)
                    h.update(head + tail)
                else:
                    while (b := f.read(chunk)):
                        h.update(b)
            if h.hexdigest() != want:
                errors.append(f"chunk {chunk} start {start}: bytes differ")
        except OSError as e:
            errors.append(f"chunk {chunk} start {start}: {e}")

    threads = [threading.Thread(target=reader, args=(c, s))
               for c, s in [(4096, 0), (65536, 0), (131072, 0), (1 << 20, 0), (12345, 0),
                            (65536, 7 * 1024 * 1024 + 3), (4096, 1), (1 << 20, len(data) - 5)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    mount.stop()


def test_remote_sync_folder_does_not_hide_control(drive_dir, fake, mount):
    (drive_dir / ".sync").mkdir()
    (drive_dir / ".sync" / "inside.txt").write_bytes(b"remote .sync content\n")
    (drive_dir / "top.txt").write_bytes(b"top\n")
    mount.start()
    mount.sync_and_wait()
    names = os.listdir(mount.mnt)
    assert sorted(names) == [".sync", "top.txt"]      # listed once: the control directory
    assert {"start", "cancel", "status", "events", "changes", "remote"} <= set(os.listdir(mount.sync))
    assert (mount.sync / "remote" / "inside.txt").read_bytes() == b"remote .sync content\n"
    with pytest.raises(OSError) as e:
        os.rmdir(mount.sync)
    assert e.value.errno == errno.EPERM
    mount.stop()
