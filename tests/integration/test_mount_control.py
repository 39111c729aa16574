"""The .sync/ control files on a real mount: start/cancel semantics (EBUSY, EINVAL), status
snapshots, poll wake-ups, the event stream, the change feed, permissions."""

import errno
import json
import os
import pathlib
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from mount_fixture import TERMINAL, drive_dir, fake, mount  # noqa: F401


def slow_drive(root, files=12, size=256 * 1024):
    for i in range(files):
        (root / f"f{i:02}.bin").write_bytes(bytes([i]) * size)


def slow_down(fake, bps=256 * 1024):
    # The fake's bandwidth cap keeps a run active long enough to be refused or cancelled.
    fake.faults(bandwidth_bps=bps)


def test_status_snapshot_and_size(drive_dir, fake, mount):
    (drive_dir / "a.txt").write_bytes(b"a")
    mount.start()
    path = mount.sync / "status"
    text = open(path).read()
    doc = json.loads(text)
    assert "state" in doc
    assert os.stat(path).st_size >= len(text) - 64   # a fresh snapshot's size, not 0 or 4096
    cat = subprocess.run(["cat", path], capture_output=True, text=True, check=True).stdout
    json.loads(cat)
    if shutil.which("jq"):
        subprocess.run(["jq", "-e", ".state", path], capture_output=True, check=True)
    mount.sync_and_wait()
    assert json.loads(open(path).read())["state"] == "completed"
    mount.stop()


def test_start_busy_invalid_and_cancel(drive_dir, fake, mount):
    slow_drive(drive_dir)
    slow_down(fake)
    mount.allowed.append(__import__("re").compile("start refused"))
    mount.start()

    # No run: cancel succeeds and changes nothing.
    before = mount.status()
    mount.cancel()
    assert mount.status()["state"] == before["state"]

    # Unknown word: EINVAL, and the reason in the status. (bash, not dash: dash's echo reports
    # every write error as "I/O error".)
    r = subprocess.run(["bash", "-c", f"echo bogus-word > '{mount.sync}/start'"], capture_output=True, text=True)
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    assert "bogus-word" in json.dumps(mount.status()["last_rejected_start"])

    mount.start_sync()
    mount.wait_status(lambda s: s["state"] == "syncing", 30, "syncing")

    # Busy: from a shell echo and from Python.
    r = subprocess.run(["bash", "-c", f"echo > '{mount.sync}/start'"], capture_output=True, text=True)
    assert r.returncode != 0 and "busy" in r.stderr.lower(), r.stderr
    with pytest.raises(OSError) as e:
        with open(mount.sync / "start", "w") as f:
            f.write("full\n")
    assert e.value.errno == errno.EBUSY
    rejected = mount.status()["last_rejected_start"]
    assert rejected and "already in progress" in rejected["reason"]

    mount.cancel()
    doc = mount.wait_status(lambda s: s["state"] in TERMINAL, 30, "the cancel to land")
    assert doc["state"] == "cancelled"
    mount.stop()


def read_raw(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 20).decode()
    finally:
        os.close(fd)


def test_status_parseable_throughout_a_run(drive_dir, fake, mount):
    slow_drive(drive_dir, files=20, size=64 * 1024)
    slow_down(fake, 1024 * 1024)
    mount.start()
    seen, bad = set(), []
    done = threading.Event()
    saw_end = threading.Event()

    def hammer():
        while not done.is_set():
            for reader in (lambda p: open(p).read(), read_raw):
                try:
                    text = reader(mount.sync / "status")
                    seen.add(json.loads(text)["state"])
                except ValueError as e:
                    bad.append(str(e))
            if "completed" in seen:
                saw_end.set()

    t = threading.Thread(target=hammer)
    t.start()
    try:
        mount.sync_and_wait(timeout=120)
        # The run's end stays in the status, so the reader sees it on its next pass: stop it
        # only then (stopping it when our own wait saw the end raced with its last read).
        assert saw_end.wait(60), f"the reader never saw the end of the run; it saw {seen}"
    finally:
        done.set()
        t.join()
    assert not bad
    assert {"syncing", "completed"} <= seen
    mount.stop()


def test_poll_wakes_on_status_change(drive_dir, fake, mount):
    (drive_dir / "a.txt").write_bytes(b"a")
    mount.start()
    fd = os.open(mount.sync / "status", os.O_RDONLY)
    try:
        p = select.poll()
        p.register(fd, select.POLLIN | select.POLLPRI)
        assert p.poll(200) == []           # nothing changed since the open
        mount.start_sync()
        assert p.poll(10000), "poll did not wake when the status changed"
    finally:
        os.close(fd)
    mount.wait_status(lambda s: s["state"] in TERMINAL)
    mount.stop()


def test_events_in_order_nothing_lost(drive_dir, fake, mount):
    for i in range(30):
        (drive_dir / f"e{i:02}.txt").write_bytes(b"x" * i)
    mount.start()
    lines = []
    with open(mount.sync / "events", "rb", buffering=0) as ev:
        mount.start_sync()
        buf = b""
        while True:
            chunk = ev.read(512)        # a small buffer: long lines arrive in pieces
            assert chunk, "events ended early"
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                lines.append(json.loads(line))
            if lines and lines[-1]["event"] == "run_finished":
                break
    events = [e["event"] for e in lines]
    assert "events_lost" not in events
    assert events[0] == "run_started"
    seqs = [e["seq"] for e in lines]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "sequence numbers skip"
    published = {e["path"] for e in lines if e["event"] == "file_published"}
    assert {f"/e{i:02}.txt" for i in range(30)} <= published
    mount.stop()


def test_slow_events_reader_is_told_what_it_lost(drive_dir, fake, mount):
    # Two events per file (started, published) overflow the engine's ring of 4096 events
    # while this reader reads nothing.
    for d in range(21):
        (drive_dir / f"d{d:02}").mkdir()
        for i in range(100):
            (drive_dir / f"d{d:02}" / f"{i:03}.txt").write_bytes(b"%d" % i)
    mount.start()
    with open(mount.sync / "events", "rb", buffering=0) as ev:
        mount.sync_and_wait(timeout=300)
        first = json.loads(ev.read(65536).split(b"\n", 1)[0])
    assert first["event"] == "events_lost" and first["count"] > 0, first
    mount.stop()


def test_blocked_events_reader_is_interruptible(drive_dir, fake, mount):
    mount.start()
    r = subprocess.run(["timeout", "-s", "INT", "0.5", "cat", mount.sync / "events"], capture_output=True)
    assert r.returncode == 124          # cat blocked until the signal, then ended
    mount.stop()


class EventLines:
    """Whole JSON lines from an open .sync/events fd, however the reads cut them."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = b""

    def complete(self):
        lines = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            lines.append(json.loads(line))
        return lines

    def read(self, size=65536):
        """One read(2) (blocking unless poll said readable); b"" at the end of the stream."""
        chunk = os.read(self.fd, size)
        self.buf += chunk
        return chunk


def published(lines, path):
    return [e for e in lines if e["event"] == "file_published" and e["path"] == path]


def test_events_never_overtake_invalidations(drive_dir, fake, mount):
    """A reader that sees "file_published P" and at once looks at P through the mount sees the
    change, never the kernel's cached entry (60 s timeouts), whether it blocks in read(2) or
    waits in poll(2). The daemon's test seam delays every publish note of the invalidation
    thread by 150 ms: without the barrier a reader gets the line that long before the kernel
    forgets the old dentry and attributes. A clean stop still ends the stream."""
    (drive_dir / "doc.txt").write_bytes(b"old\n")
    (drive_dir / "gone.txt").write_bytes(b"going\n")
    mount.extra_env["ODSF_TEST_INVALIDATION_DELAY_MS"] = "150"
    mount.start()
    mount.sync_and_wait()
    doc, gone = mount.mnt / "doc.txt", mount.mnt / "gone.txt"
    # Into the kernel's caches: dentries, attributes, pages.
    assert doc.read_bytes() == b"old\n" and os.stat(doc).st_size == 4 and gone.exists()

    fd = os.open(mount.sync / "events", os.O_RDONLY)
    try:
        ev = EventLines(fd)
        # A blocking reader.
        new = b"the second, longer content\n"
        fake.modify("/doc.txt", new)
        fake.delete("/gone.txt")
        mount.start_sync()
        seen = set()
        while seen != {"/doc.txt", "/gone.txt"}:
            assert ev.read(), "events ended early"
            for e in ev.complete():
                if e["event"] != "file_published" or e["path"] in seen:
                    continue
                if e["path"] == "/doc.txt":
                    assert os.stat(doc).st_size == len(new), "stale attributes after the event"
                    assert doc.read_bytes() == new
                elif e["path"] == "/gone.txt":
                    assert not gone.exists(), "a deleted file still visible after its event"
                seen.add(e["path"])
        mount.wait_status(lambda s: s["state"] in TERMINAL, 60, "the run to finish")

        # A reader that waits in poll(2) and reads only what poll says is there.
        newer = b"third version, longer again\n"
        fake.modify("/doc.txt", newer)
        mount.start_sync()
        p = select.poll()
        p.register(fd, select.POLLIN)
        found = False
        while not found:
            assert p.poll(30000), "poll timed out"
            assert ev.read(), "events ended early"
            for e in published(ev.complete(), "/doc.txt"):
                assert os.stat(doc).st_size == len(newer), "stale attributes after the event"
                assert doc.read_bytes() == newer
                found = True
        mount.wait_status(lambda s: s["state"] in TERMINAL, 60, "the run to finish")

        # A clean stop: the rest of the stream, then end-of-file.
        mount.signal(signal.SIGTERM)
        while ev.read():
            pass
        mount.wait_exit(30, expect=0)
    finally:
        os.close(fd)


def open_events_with_late_notes(mount, delay):
    """Starts @mount with every publish note @delay s late (the test seam) on an empty drive,
    so the invalidation thread is idle, and opens its event stream."""
    mount.extra_env["ODSF_TEST_INVALIDATION_DELAY_MS"] = str(int(delay * 1000))
    mount.start()
    mount.sync_and_wait()
    return os.open(mount.sync / "events", os.O_RDONLY)


def note_published(fd, path, got, done=None):
    """Reads the stream on @fd to its end; got["at"]: when @path's file_published line came."""
    ev = EventLines(fd)
    while ev.read():
        for e in published(ev.complete(), path):
            got.setdefault("at", time.monotonic())
            if done is not None:
                done.set()


def test_events_bound_answers_reader_beside_poller(drive_dir, fake, mount):
    """The 2 s bound on held lines reaches a read blocked on the same open file as a poller.
    The seam delays the publish note by 6 s; a poll that comes after 2 s releases the held
    lines, and the blocked read must get them then, not when the invalidation thread next
    gets to a note (here: 6 s; on an idle engine: the next change, maybe hours)."""
    delay = 6.0
    fd = open_events_with_late_notes(mount, delay)
    got = {}
    stop_polling = threading.Event()

    def poller():
        # Polls without reading, as a second thread of an event loop would.
        p = select.poll()
        p.register(fd, select.POLLIN)
        while not stop_polling.is_set():
            if p.poll(200):
                stop_polling.wait(0.1)   # readable: the reader takes it; do not spin

    threads = [threading.Thread(target=note_published, args=(fd, "/new.txt", got)),
               threading.Thread(target=poller)]
    try:
        for t in threads:
            t.start()
        fake.add("/new.txt", b"new\n")
        started = time.monotonic()
        mount.start_sync()
        deadline = started + delay + 5
        while "at" not in got and time.monotonic() < deadline:
            stop_polling.wait(0.05)
        assert "at" in got, "the line never came"
        waited = got["at"] - started
        # Held (the note is 6 s late), but for about 2 s only.
        assert waited < delay - 2.0, f"blocked read answered after {waited:.1f} s, bound is 2 s"
    finally:
        stop_polling.set()
        mount.signal(signal.SIGTERM)   # the stream ends: the reader sees end-of-file
        for t in threads:
            t.join(30)
        os.close(fd)
    mount.wait_exit(30, expect=0)


def test_events_bound_holds_with_nothing_else_going_on(drive_dir, fake, mount):
    """A lone blocked reader gets a line about 2 s after it was appended, although the
    invalidation thread is busy with the line's note for 6 s (the seam) and no other read,
    poll or note comes: the bound is kept by the events thread, not by the next activity."""
    delay = 6.0
    fd = open_events_with_late_notes(mount, delay)
    got = {}
    done = threading.Event()

    t = threading.Thread(target=note_published, args=(fd, "/new.txt", got, done))
    try:
        t.start()
        fake.add("/new.txt", b"new\n")
        started = time.monotonic()
        mount.start_sync()
        assert done.wait(delay + 5), "the line never came"
        waited = got["at"] - started
        assert 1.5 < waited < delay - 2.0, f"blocked read answered after {waited:.1f} s, bound is 2 s"
    finally:
        mount.signal(signal.SIGTERM)   # the stream ends: the reader sees end-of-file
        t.join(30)
        os.close(fd)
    mount.wait_exit(30, expect=0)


def test_withdrawn_file_gone_at_its_event(drive_dir, fake, mount):
    """A published file that grows past max_file_size is withdrawn from the mount: once its
    file_filtered line is read, a stat through the mount fails at once, not after the
    kernel's 60 s entry timeout."""
    (drive_dir / "grows.txt").write_bytes(b"small\n")
    mount.options += ["max_file_size=16"]
    mount.start()
    mount.sync_and_wait()
    grows = mount.mnt / "grows.txt"
    assert os.stat(grows).st_size == 6   # the dentry and attributes are in the kernel's caches
    with open(mount.sync / "events", "rb", buffering=0) as f:
        ev = EventLines(f.fileno())
        fake.modify("/grows.txt", b"now longer than sixteen bytes\n")
        mount.start_sync()
        filtered = False
        while not filtered:
            assert ev.read(), "events ended early"
            filtered = any(e["event"] == "file_filtered" and e["path"] == "/grows.txt"
                           for e in ev.complete())
        with pytest.raises(FileNotFoundError):
            os.stat(grows)
    assert "grows.txt" not in os.listdir(mount.mnt)
    mount.stop()


def test_changes_feed(drive_dir, fake, mount):
    (drive_dir / "c1.txt").write_bytes(b"one")
    (drive_dir / "c2.txt").write_bytes(b"two!")
    mount.start()
    mount.sync_and_wait()
    text = (mount.sync / "changes").read_text()
    lines = [json.loads(l) for l in text.splitlines() if l]
    assert lines[0].get("format") == "odsf-changes"
    paths = {l["path"]: l for l in lines[1:]}
    assert paths["/c1.txt"]["size"] == 3 and paths["/c2.txt"]["size"] == 4
    # A reader resumes from its byte offset.
    offset = len(text.encode())
    fake.add("/c3.txt", b"three")
    mount.sync_and_wait()
    with open(mount.sync / "changes", "rb") as f:
        f.seek(offset)
        rest = [json.loads(l) for l in f.read().splitlines() if l]
    assert [l["path"] for l in rest] == ["/c3.txt"]
    mount.stop()


def test_control_file_modes(drive_dir, fake, mount):
    mount.start()
    modes = {n: stat.S_IMODE(os.stat(mount.sync / n).st_mode) for n in ("start", "cancel", "status", "events", "changes")}
    assert modes == {"start": 0o200, "cancel": 0o200, "status": 0o444, "events": 0o400, "changes": 0o400}
    with pytest.raises(OSError):
        os.unlink(mount.sync / "status")
    # Nobody but the owner may write: a different uid is refused by the kernel's permission check.
    if os.getuid() == 0:
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c",
                            f"echo > '{mount.sync}/start'"], capture_output=True, text=True)
        assert r.returncode != 0   # without allow_other the mount is not even visible to others
    mount.stop()


def as_nobody(*cmd):
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *map(str, cmd)],
                          capture_output=True, text=True)


def test_allow_other_reads_but_cannot_control(drive_dir, fake, tmp_path):
    """With allow_other another user reads the tree and the status, but cannot start, cancel,
    exclude or read the event stream."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    from mount_fixture import Mount
    (drive_dir / "shared.txt").write_bytes(b"for everyone\n")
    public = pathlib.Path(tempfile.mkdtemp(prefix="odsf-allow-other-", dir="/tmp"))
    os.chmod(public, 0o755)
    m = Mount(tmp_path, fake, options=["allow_other"], mnt=public / "mnt")
    try:
        m.start()
        m.sync_and_wait()
        assert as_nobody("cat", m.mnt / "shared.txt").stdout == "for everyone\n"
        json.loads(as_nobody("cat", m.sync / "status").stdout)
        for cmd in (["sh", "-c", f"echo > '{m.sync}/start'"], ["sh", "-c", f"echo > '{m.sync}/cancel'"],
                    ["cat", m.sync / "events"], ["rm", "-f", m.mnt / "shared.txt"]):
            r = as_nobody(*cmd)
            assert r.returncode != 0, cmd
        assert (m.mnt / "shared.txt").exists()
        assert m.status()["state"] == "completed"
        m.stop()
    finally:
        m.cleanup()
        shutil.rmtree(public, ignore_errors=True)
