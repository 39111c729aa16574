"""onedrive-syncctl against a directory that imitates a mount's .sync files: argument
parsing, what is written to the control files, the status table, --json pass-through,
--wait exit codes, follow's plain output and its progress bar under a pseudo-terminal."""

import errno
import json
import os
import pty
import select
import subprocess
import threading
import time

import pytest

from ctl_helpers import (EXIT_CANCELLED, EXIT_ERROR, EXIT_INVALID, EXIT_OK, EXIT_USAGE, STATE_EXIT,
                         SYNCCTL, FakeMount, run_ctl, wait_until)

if not SYNCCTL.exists():
    pytest.skip(f"{SYNCCTL} not built", allow_module_level=True)


@pytest.fixture
def mnt(tmp_path):
    return FakeMount(tmp_path / "mnt")


@pytest.fixture
def fifo_mnt(tmp_path):
    return FakeMount(tmp_path / "mnt", events_fifo=True)


# ---- command line -----------------------------------------------------------------------

def test_version_and_help():
    r = run_ctl("--version")
    assert r.returncode == EXIT_OK
    assert r.stdout.startswith("onedrive-syncctl ")
    r = run_ctl("--help")
    assert r.returncode == EXIT_OK
    for cmd in ("start", "cancel", "status", "follow", "login"):
        assert f"  {cmd} " in r.stdout
    assert "Exit codes" in r.stdout
    r = run_ctl("start", "--help")
    assert r.returncode == EXIT_OK and "--clear-exclusions" in r.stdout and "--wait" in r.stdout


@pytest.mark.parametrize("args", [(), ("frobnicate",), ("start",), ("status", "a", "b"),
                                  ("start", "--bogus", "x"), ("login", "extra")])
def test_usage_errors(args):
    r = run_ctl(*args)
    assert r.returncode == EXIT_USAGE, r
    assert r.stderr.strip()


def test_not_a_mount(tmp_path):
    r = run_ctl("status", tmp_path)
    assert r.returncode == EXIT_ERROR
    assert "not an onedrive-syncfs mount" in r.stderr
    r = run_ctl("start", tmp_path / "missing")
    assert r.returncode == EXIT_ERROR
    assert "No such file" in r.stderr


# ---- start / cancel ---------------------------------------------------------------------

@pytest.mark.parametrize("flags,words", [((), "\n"), (("--full",), "full\n"),
                                         (("--clear-exclusions",), "clear-exclusions\n"),
                                         (("--full", "--clear-exclusions"), "full clear-exclusions\n")])
def test_start_writes_words(mnt, flags, words):
    r = run_ctl("start", mnt.root, *flags)
    assert r.returncode == EXIT_OK, r.stderr
    # Never an empty write (the kernel would not pass it on): a bare start is a newline.
    assert mnt.written("start") == words
    assert mnt.written("cancel") == ""


@pytest.mark.parametrize("state", sorted(STATE_EXIT))
def test_start_wait_exit_codes(mnt, state):
    mnt.set_status({"state": "completed", "run_id": 1})
    p = subprocess.Popen([str(SYNCCTL), "start", str(mnt.root), "--wait"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: mnt.written("start") == "\n", what="the start write")
        # The old run's terminal state must not be taken as the result of ours.
        time.sleep(0.3)
        assert p.poll() is None, "start --wait returned on the previous run's state"
        mnt.set_status({"state": "syncing", "run_id": 2, "total": 3, "files_processed": 1})
        mnt.set_status({"state": state, "run_id": 2, "total": 3, "files_processed": 2,
                        "files_failed": 1})
        out, err = p.communicate(timeout=10)
    finally:
        p.kill()
    assert p.returncode == STATE_EXIT[state], (out, err)
    assert out.startswith(state + ": 3/3 items"), out


def test_start_wait_fast_run_without_run_id(mnt):
    # No run key in the document: a terminal state right after the start is our run's.
    mnt.set_status({"state": "syncing"})
    p = subprocess.Popen([str(SYNCCTL), "start", str(mnt.root), "--wait"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: mnt.written("start") == "\n", what="the start write")
    mnt.set_status({"state": "completed_with_errors"})
    out, err = p.communicate(timeout=10)
    assert p.returncode == 4, (out, err)


# The tool only ever writes words the daemon knows, so a real mount refuses them with EINVAL
# only when it is older than the tool (a word it does not know yet). What the tool sees then is
# write(2) failing with EINVAL; a plain file cannot do that, so .sync/start here is a kernel
# file that does: /proc/self/oom_score_adj takes an integer and fails any other write with
# EINVAL, changing nothing. "self" is resolved when the tool opens it, so it is the tool's own
# (and a refused write leaves even that unchanged).
EINVAL_FILE = "/proc/self/oom_score_adj"


@pytest.fixture
def einval_mnt(mnt):
    try:
        fd = os.open(EINVAL_FILE, os.O_WRONLY)
    except OSError as e:
        pytest.skip(f"{EINVAL_FILE}: {e}")
    try:
        os.write(fd, b"full\n")
        pytest.skip(f"{EINVAL_FILE} accepted a word instead of failing with EINVAL")
    except OSError as e:
        if e.errno != errno.EINVAL:
            pytest.skip(f"{EINVAL_FILE} fails with {e} rather than EINVAL")
    finally:
        os.close(fd)
    (mnt.sync / "start").unlink()
    (mnt.sync / "start").symlink_to(EINVAL_FILE)
    return mnt


@pytest.mark.parametrize("flags", [(), ("--full",), ("--full", "--clear-exclusions", "--wait")])
def test_start_rejected_words(einval_mnt, flags):
    # The daemon records the reason in the status before it fails the write (docs/status.md).
    reason = 'unknown start word "full" (known: clear-exclusions)'
    einval_mnt.set_status({"state": "idle", "last_rejected_start": {"time": "2026-12-03T12:00:00Z",
                                                                     "reason": reason}})
    r = run_ctl("start", einval_mnt.root, *flags)
    assert r.returncode == EXIT_INVALID, r
    assert r.stderr.strip().endswith(f"start refused: {reason}"), r.stderr
    assert "sync started" not in r.stdout


def test_start_rejected_words_without_reason(einval_mnt):
    # A daemon that gives no reason: the tool still says what the write failed with.
    r = run_ctl("start", einval_mnt.root, "--wait")
    assert r.returncode == EXIT_INVALID, r
    assert "start refused: " + os.strerror(errno.EINVAL) in r.stderr, r.stderr


def test_cancel_idle(mnt):
    r = run_ctl("cancel", mnt.root, "--wait")
    assert r.returncode == EXIT_OK
    assert "no sync was running" in r.stdout
    assert mnt.written("cancel") == "\n"


def test_cancel_wait(mnt):
    mnt.set_status({"state": "syncing", "run_id": 5})
    p = subprocess.Popen([str(SYNCCTL), "cancel", str(mnt.root), "--wait"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: mnt.written("cancel") == "\n", what="the cancel write")
    mnt.set_status({"state": "cancelled", "run_id": 5})
    out, err = p.communicate(timeout=10)
    assert p.returncode == EXIT_CANCELLED, (out, err)
    assert out.startswith("cancelled")


def test_wait_mount_gone(mnt):
    mnt.set_status({"state": "syncing", "run_id": 5})
    p = subprocess.Popen([str(SYNCCTL), "cancel", str(mnt.root), "--wait"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: mnt.written("cancel") == "\n", what="the cancel write")
    os.unlink(mnt.sync / "status")
    out, err = p.communicate(timeout=10)
    assert p.returncode == EXIT_ERROR
    assert "not an onedrive-syncfs mount" in err


# ---- status -----------------------------------------------------------------------------

STATUS = {
    "state": "syncing", "run_id": 3, "started_at": "2026-12-03T10:00:00Z",
    "total": 10, "files_processed": 4, "files_unchanged": 1, "files_failed": 1,
    "bytes_downloaded": 3 * 1048576,
    "current_files": ["/Docs/a", "/Docs/b"],
    "failed_files": [{"path": "/Docs/broken.pdf", "error_type": "hash_mismatch",
                      "message": "content does not match quickXorHash", "attempts": 2}],
    "sources": [{"path": "/Docs", "state": "processing", "last_completed": None},
                {"path": "/Pictures", "state": "completed", "error": None}],
}


def test_status_table(mnt):
    mnt.set_status(STATUS)
    r = run_ctl("status", mnt.root)
    assert r.returncode == EXIT_OK, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("State:     syncing, started 2026-12-03")
    assert lines[1] == "Progress:  6/10 items (60%), 3.0 MiB downloaded, 1 failed"
    assert lines[2] == "Items:     4 downloaded, 1 unchanged, 1 failed"
    assert lines[3] == "Working:   /Docs/a, /Docs/b"
    assert "Failed files (1):" in lines
    assert "  /Docs/broken.pdf: hash_mismatch: content does not match quickXorHash (2 attempts)" in lines
    assert any(l.startswith("  /Docs ") and l.endswith("processing") for l in lines)
    assert any(l.startswith("  /Pictures ") and l.endswith("completed") for l in lines)


def test_status_json_pass_through(mnt):
    text = json.dumps(STATUS, indent=2)
    (mnt.sync / "status").write_text(text)
    r = run_ctl("status", mnt.root, "--json")
    assert r.returncode == EXIT_OK
    assert r.stdout == text + "\n"
    assert json.loads(r.stdout) == STATUS


@pytest.mark.parametrize("body", ["", "{\"state\": ", "[1]"])
def test_status_malformed(mnt, body):
    (mnt.sync / "status").write_text(body)
    for args in ((), ("--json",)):
        r = run_ctl("status", mnt.root, *args)
        assert r.returncode == EXIT_ERROR
        assert "not a JSON object" in r.stderr
        assert r.stdout == ""


# ---- follow -----------------------------------------------------------------------------

EVENTS = [
    {"seq": 0, "time": 1796292000, "event": "run_started", "run_id": 3, "full": False},
    {"seq": 1, "time": 1796292001, "event": "file_done", "path": "/Docs/a b.txt", "bytes": 12},
    {"seq": 2, "time": 1796292002, "event": "file_failed", "path": "/Docs/x", "error": "timeout"},
    {"event": "events_lost", "count": 7},
    {"seq": 10, "time": 1796292003, "event": "run_finished", "state": "completed_with_errors"},
]


def test_follow_plain_regular_file(mnt):
    (mnt.sync / "events").write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    r = run_ctl("follow", mnt.root)
    assert r.returncode == EXIT_OK, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(EVENTS)
    assert lines[0].endswith(" run_started run_id=3 full=false")
    assert lines[1].endswith(' file_done path="/Docs/a b.txt" bytes=12')
    assert lines[3] == "events_lost count=7"
    assert "\r" not in r.stdout and "\033" not in r.stdout


def test_follow_plain_streams(fifo_mnt):
    """Each event is printed when it arrives, not when the stream ends."""
    p = subprocess.Popen([str(SYNCCTL), "follow", str(fifo_mnt.root)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with open(fifo_mnt.sync / "events", "w") as w:
            for e in EVENTS[:3]:
                w.write(json.dumps(e) + "\n")
                w.flush()
                line = p.stdout.readline()
                assert f" {e['event']} " in line
        out, err = p.communicate(timeout=10)   # writer closed: end of stream
    finally:
        p.kill()
    assert p.returncode == EXIT_OK, err
    assert out == ""


def read_pty_until(fd, pred, timeout=10.0):
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            if pred(buf):
                return buf
    raise AssertionError(f"pty output never matched; got {buf[-2000:]!r}")


def test_follow_progress_bar_on_pty(fifo_mnt):
    fifo_mnt.set_status({"state": "syncing", "run_id": 1, "total": 4, "files_processed": 1,
                         "bytes_downloaded": 1048576, "bytes_total": 4 * 1048576})
    master, slave = pty.openpty()
    p = subprocess.Popen([str(SYNCCTL), "follow", str(fifo_mnt.root)], stdin=slave,
                         stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    writer = None
    try:
        # The FIFO open blocks until the tool opens it for reading.
        opened = threading.Event()

        def open_writer():
            nonlocal writer
            writer = open(fifo_mnt.sync / "events", "w")
            opened.set()

        threading.Thread(target=open_writer, daemon=True).start()
        assert opened.wait(10)
        out = read_pty_until(master, lambda b: b"1/4 items" in b)
        assert b"\r\x1b[K[" in out                      # a bar redrawn in place
        assert b"25%" in out and b"1.0 MiB/4.0 MiB" in out

        # Progress moves: the bar follows the status, with a rate and an ETA.
        fifo_mnt.set_status({"state": "syncing", "run_id": 1, "total": 4, "files_processed": 2,
                             "bytes_downloaded": 2 * 1048576, "bytes_total": 4 * 1048576})
        out = read_pty_until(master, lambda b: b"2/4 items" in b and b"ETA" in b)
        assert b"/s  ETA " in out

        # A notable event is printed on its own line above the bar; a routine one is not.
        writer.write(json.dumps({"seq": 1, "time": 1796292002, "event": "file_done", "path": "/quiet"}) + "\n")
        writer.write(json.dumps({"seq": 2, "time": 1796292002, "event": "file_failed",
                                 "path": "/Docs/x", "error": "timeout"}) + "\n")
        writer.flush()
        # Until the line is complete: the tool may write it in more than one piece.
        out = read_pty_until(master, lambda b: b"file_failed" in b
                             and b"\r\n" in b[b.index(b"file_failed"):])
        assert b"file_failed path=/Docs/x error=timeout\r\n" in out
        assert b"/quiet" not in out
        writer.close()
        writer = None
        p.wait(timeout=10)
        assert p.returncode == EXIT_OK
    finally:
        if writer:
            writer.close()
        p.kill()
        os.close(master)


def test_follow_interrupt(fifo_mnt):
    p = subprocess.Popen([str(SYNCCTL), "follow", str(fifo_mnt.root)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    w = open(fifo_mnt.sync / "events", "w")     # blocks until the tool has opened it
    try:
        p.send_signal(2)
        p.wait(timeout=10)
        assert p.returncode == 130
    finally:
        w.close()
        p.kill()
