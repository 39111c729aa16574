"""Helpers for the onedrive-syncctl tests: where the binaries are, and a directory that
imitates a mount's .sync/ files (regular files and FIFOs), so the tool's parsing, output and
exit codes are tested without a daemon. Behaviour only a real mount has (EBUSY, poll wake-ups)
is tested against the real mount in test_ctl_mount.py."""

import json
import os
import pathlib
import shutil
import subprocess
import time

BUILD = pathlib.Path(os.environ.get("ODSF_BUILD_DIR", pathlib.Path(__file__).resolve().parents[2] / "build"))
SOURCE = pathlib.Path(os.environ.get("ODSF_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
SYNCCTL = pathlib.Path(os.environ.get("ODSF_SYNCCTL", BUILD / "tools" / "onedrive-syncctl" / "onedrive-syncctl"))
DAEMON = pathlib.Path(os.environ.get("ODSF_DAEMON", BUILD / "onedrive-syncfs"))

# Exit codes, as documented in onedrive-syncctl(1).
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3
EXIT_COMPLETED_WITH_ERRORS, EXIT_CANCELLED, EXIT_FAILED, EXIT_INVALID = 4, 5, 6, 7
EXIT_LOGIN_DECLINED, EXIT_LOGIN_EXPIRED, EXIT_NOT_CONFIGURED = 8, 9, 10

STATE_EXIT = {
    "completed": EXIT_OK,
    "completed_with_errors": EXIT_COMPLETED_WITH_ERRORS,
    "cancelled": EXIT_CANCELLED,
    "failed": EXIT_FAILED,
    "interrupted": EXIT_FAILED,
}


def run_ctl(*args, timeout=30, **kw):
    return subprocess.run([str(SYNCCTL), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def wait_until(pred, timeout=10.0, what="condition"):
    """Polls a condition the test itself cannot be notified of (a file another process
    writes). Fails loudly on timeout instead of passing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class FakeMount:
    """MOUNT/.sync/{start,cancel,status,events} as plain files; events may be a FIFO."""

    def __init__(self, root: pathlib.Path, events_fifo=False):
        self.root = root
        self.sync = root / ".sync"
        self.sync.mkdir(parents=True)
        for name in ("start", "cancel"):
            (self.sync / name).write_text("")
        self.set_status({"state": "idle"})
        if events_fifo:
            os.mkfifo(self.sync / "events")
        else:
            (self.sync / "events").write_text("")

    def set_status(self, doc):
        # Atomic replace, so the tool never reads half a document.
        tmp = self.sync / ".status.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.sync / "status")

    def written(self, name):
        return (self.sync / name).read_text()


def have_fuse():
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
