"""onedrive-syncctl against a real mount of the daemon and the fake server: start, cancel,
status, follow, every --wait exit code, EBUSY from a real control file, follow's plain output
and its progress bar under a pseudo-terminal.

Long runs are made with the fake's bandwidth cap, not with sleeps: a run over a capped link
stays active until the test removes the cap."""

import json
import re
import os
import pathlib
import pty
import select
import shutil
import signal
import subprocess
import time

import pytest

from ctl_helpers import (DAEMON, EXIT_BUSY, EXIT_CANCELLED, EXIT_COMPLETED_WITH_ERRORS, EXIT_FAILED,
                         EXIT_OK, FAKE_GRAPH, SYNCCTL, Daemon, FakeGraph, isolated_env, login,
                         run_ctl, wait_until, write_profile)

if not SYNCCTL.exists():
    pytest.skip(f"{SYNCCTL} not built", allow_module_level=True)
if not DAEMON.exists():
    pytest.skip(f"the daemon is not built yet ({DAEMON})", allow_module_level=True)
if not FAKE_GRAPH.exists():
    pytest.skip(f"the fake Graph server is not built ({FAKE_GRAPH})", allow_module_level=True)
if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("/dev/fuse or fusermount3 missing", allow_module_level=True)

FILES, SIZE = 12, 64 * 1024


def has_open(pid, name):
    """Whether process @pid has a file named @name open. Its fds come and go while we look
    (a readlink of one listed a moment ago can fail): those simply do not count."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.path.basename(os.readlink(f"/proc/{pid}/fd/{fd}")) == name:
                return True
        except OSError:
            continue
    return False


def make_world(tmp_path, synthetic):
    fake = FakeGraph(tmp_path, "--device-interval", "1", synthetic=synthetic)
    mount = None
    try:
        env = isolated_env(tmp_path)
        write_profile(env, fake, extra="workers=2\n")
        r = login(env, fake)
        assert r.returncode == EXIT_OK, r.stderr
        mount = Daemon(tmp_path, env, tmp_path / "mnt")
        yield fake, env, mount
        mount.stop()
        mount = None
    finally:
        if mount:
            mount.kill()
        fake.stop()


@pytest.fixture
def world(tmp_path):
    """The fake server with a tiny drive, a signed-in profile, a mounted daemon (no sync yet)."""
    yield from make_world(tmp_path, "3,1K,1")


@pytest.fixture
def world_files(tmp_path):
    """As `world`, with a drive of FILES files of SIZE bytes."""
    yield from make_world(tmp_path, f"{FILES},{SIZE},3")


def status(mnt):
    with open(mnt / ".sync" / "status") as f:
        return json.load(f)


def throttle(fake, bps):
    fake.admin("POST", "faults", {"bandwidth_bps": bps})


def wait_state(mnt, pred, what):
    return wait_until(lambda: pred(status(mnt)), timeout=60, what=what)


def test_status_idle(world):
    fake, env, m = world
    r = run_ctl("status", m.mountpoint, env=env)
    assert r.returncode == EXIT_OK, r.stderr
    assert r.stdout.startswith("State:     ")
    j = run_ctl("status", m.mountpoint, "--json", env=env)
    assert j.returncode == EXIT_OK
    assert json.loads(j.stdout)["state"] == status(m.mountpoint)["state"]


def test_start_wait_completed(world_files):
    fake, env, m = world_files
    r = run_ctl("start", m.mountpoint, "--wait", env=env, timeout=120)
    assert r.returncode == EXIT_OK, r.stdout + r.stderr
    st = status(m.mountpoint)
    assert st["state"] == "completed" and st["files_processed"] == FILES
    # Work items: the files and the folders.
    assert r.stdout.startswith(f"completed: {st['total']}/{st['total']} items"), r.stdout
    t = run_ctl("status", m.mountpoint, env=env)
    assert t.stdout.startswith("State:     completed, ended ")
    assert "Sources:\n  /" in t.stdout


def test_busy_cancel_resume(world_files):
    fake, env, m = world_files
    throttle(fake, 4096)       # ~16 s per file: the run stays active until the cap goes
    r = run_ctl("start", m.mountpoint, env=env)
    assert r.returncode == EXIT_OK, r.stderr
    wait_state(m.mountpoint, lambda s: s["state"] == "syncing", "syncing")

    busy = run_ctl("start", m.mountpoint, "--full", env=env)
    assert busy.returncode == EXIT_BUSY, busy
    assert "A sync is already in progress" in busy.stderr
    assert status(m.mountpoint)["last_rejected_start"] is not None

    c = run_ctl("cancel", m.mountpoint, "--wait", env=env, timeout=60)
    assert c.returncode == EXIT_CANCELLED, c.stdout + c.stderr
    assert c.stdout.startswith("cancelled")

    throttle(fake, 0)
    r = run_ctl("start", m.mountpoint, "--wait", env=env, timeout=120)
    assert r.returncode == EXIT_OK, r.stdout + r.stderr


def test_start_wait_cancelled_by_other(world_files):
    fake, env, m = world_files
    throttle(fake, 4096)
    p = subprocess.Popen([str(SYNCCTL), "start", str(m.mountpoint), "--wait"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_state(m.mountpoint, lambda s: s["state"] == "syncing", "syncing")
        # A plain shell-style cancel from elsewhere: start --wait reports it.
        with open(m.mountpoint / ".sync" / "cancel", "w") as f:
            f.write("\n")
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == EXIT_CANCELLED, out + err


def test_start_wait_completed_with_errors(world_files):
    fake, env, m = world_files
    tree = fake.admin("GET", "tree")
    victim = next(i for i in tree["items"] if not i["folder"])
    # 403 is not retried: the file fails at once and the run ends with errors.
    fake.admin("POST", "faults", {"errors": [{"status": 403, "route": "content",
                                              "item_id": victim["id"], "count": -1}]})
    r = run_ctl("start", m.mountpoint, "--wait", env=env, timeout=120)
    assert r.returncode == EXIT_COMPLETED_WITH_ERRORS, r.stdout + r.stderr
    t = run_ctl("status", m.mountpoint, env=env)
    assert "Failed files (1):" in t.stdout
    assert victim["path"] in t.stdout


def test_start_wait_failed_when_service_gone(world):
    fake, env, m = world
    fake.stop()                # the mount stays up and serves the cache; a run fails
    r = run_ctl("start", m.mountpoint, "--wait", env=env, timeout=120)
    assert r.returncode == EXIT_FAILED, r.stdout + r.stderr
    t = run_ctl("status", m.mountpoint, env=env)
    assert t.stdout.startswith("State:     failed")
    assert "Error:" in t.stdout


def test_cancel_idle(world):
    fake, env, m = world
    r = run_ctl("cancel", m.mountpoint, "--wait", env=env)
    assert r.returncode == EXIT_OK
    assert "no sync was running" in r.stdout


def test_follow_plain(world_files):
    fake, env, m = world_files
    p = subprocess.Popen([str(SYNCCTL), "follow", str(m.mountpoint)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        # follow opens the stream at its end: start only once it is reading.
        wait_until(lambda: has_open(p.pid, "events"),
                   what="follow to open .sync/events")
        r = run_ctl("start", m.mountpoint, env=env)
        assert r.returncode == EXIT_OK
        lines = []
        while True:
            line = p.stdout.readline()
            assert line, "follow ended early: " + p.stderr.read()
            lines.append(line.rstrip("\n"))
            if " run_finished " in line:
                break
        p.send_signal(signal.SIGINT)
        p.wait(timeout=10)
        assert p.returncode == 130
    finally:
        p.kill()
    assert " run_started " in lines[0] or any(" run_started " in l for l in lines)
    files = [l for l in lines if " file_published " in l and " action=folder" not in l]
    assert len(files) == FILES, lines
    for l in lines:
        assert "\r" not in l and "\033" not in l
        # HH:MM:SS event key=value ...
        assert l[2] == ":" and l[5] == ":" and l[8] == " ", l


def read_pty_until(fd, pred, timeout=60.0):
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
    raise AssertionError(f"pty output never matched; got {buf[-3000:]!r}")


def test_follow_progress_bar(world_files):
    fake, env, m = world_files
    throttle(fake, 64 * 1024)      # about a second per file
    master, slave = pty.openpty()
    p = subprocess.Popen([str(SYNCCTL), "follow", str(m.mountpoint)], stdin=slave, stdout=slave,
                         stderr=slave, env=env, close_fds=True)
    os.close(slave)
    try:
        read_pty_until(master, lambda b: b"waiting for a sync to start" in b)
        assert run_ctl("start", m.mountpoint, env=env).returncode == EXIT_OK
        out = read_pty_until(master, lambda b: b"run_started" in b)
        out += read_pty_until(master, lambda b: b"/s  ETA " in b and b" items" in b)
        assert b"\r\x1b[K[" in out
        assert re.search(rb"\d+/\d+ items", out)
        throttle(fake, 0)
        out = read_pty_until(master, lambda b: b"run_finished" in b)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=10)
        assert p.returncode == 130
    finally:
        p.kill()
        os.close(master)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to act as another user")
def test_other_user_with_allow_other(tmp_path):
    """With allow_other another user reads the status but cannot start or cancel: the tool says
    why and exits 1."""
    import tempfile
    # The mount point must be reachable by that user: pytest's tmp dirs are private.
    base = pathlib.Path(tempfile.mkdtemp(prefix="odsf-ctl-other-"))
    base.chmod(0o755)
    fake = FakeGraph(tmp_path, "--device-interval", "1")
    mount = None
    try:
        env = isolated_env(tmp_path)
        write_profile(env, fake)
        assert login(env, fake).returncode == EXIT_OK
        mount = Daemon(tmp_path, env, base / "mnt", "allow_other")
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(SYNCCTL)]
        if not os.access(SYNCCTL, os.X_OK) or not all(
                os.stat(p).st_mode & 0o005 for p in [SYNCCTL, *SYNCCTL.parents][:-1]):
            pytest.skip(f"{SYNCCTL} is not reachable by another user")
        st = subprocess.run(as_nobody + ["status", str(mount.mountpoint)], capture_output=True, text=True)
        assert st.returncode == EXIT_OK, st.stderr
        assert st.stdout.startswith("State:     ")
        s = subprocess.run(as_nobody + ["start", str(mount.mountpoint)], capture_output=True, text=True)
        assert s.returncode == 1, s
        assert "only the owner of the mount may start a sync" in s.stderr
        c = subprocess.run(as_nobody + ["cancel", str(mount.mountpoint)], capture_output=True, text=True)
        assert c.returncode == 1, c
        mount.stop()
        mount = None
    finally:
        if mount:
            mount.kill()
        fake.stop()
        shutil.rmtree(base, ignore_errors=True)


def unit_exec_start(daemon, profile, mountpoint, options=""):
    """The unit template's ExecStart with systemd's substitutions done by hand: %i, $OPTIONS
    (split into words) and ${MOUNTPOINT}."""
    import shlex
    from ctl_helpers import SOURCE
    unit = (SOURCE / "data" / "systemd" / "onedrive-syncfs@.service.in").read_text()
    line = next(l for l in unit.splitlines() if l.startswith("ExecStart="))[len("ExecStart="):]
    line = line.replace("@bindir@/onedrive-syncfs", shlex.quote(str(daemon)))
    line = line.replace("%i", profile).replace("${MOUNTPOINT}", shlex.quote(str(mountpoint)))
    line = line.replace("$OPTIONS", options)
    return shlex.split(line)


def test_unit_command_line_stops_cleanly_on_sigterm(tmp_path):
    """What systemd runs for onedrive-syncfs@default, stopped the way systemd stops it (SIGTERM)
    in the middle of a sync: exit 0, unmounted, and the next mount starts clean."""
    from ctl_helpers import is_mounted, force_unmount
    fake = FakeGraph(tmp_path, "--device-interval", "1", synthetic=f"{FILES},{SIZE},3")
    mnt = tmp_path / "OneDrive-default"
    mnt.mkdir()
    proc = None
    try:
        env = isolated_env(tmp_path)
        write_profile(env, fake)
        assert login(env, fake).returncode == EXIT_OK
        argv = unit_exec_start(DAEMON, "default", mnt, "-o sync_on_mount")
        assert argv[1:4] == ["-f", "-o", "profile=default"], argv
        throttle(fake, 4096)
        log = open(tmp_path / "unit.log", "w+")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, timeout=20, what="the mount")
        assert proc.poll() is None, open(tmp_path / "unit.log").read()
        wait_state(mnt, lambda s: s["state"] == "syncing", "the sync_on_mount run")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, open(tmp_path / "unit.log").read()
        assert not is_mounted(mnt)
        proc = None
        throttle(fake, 0)
        # Restarted (as Restart= would after a crash, or the next login): the run resumes.
        m = Daemon(tmp_path, env, mnt, "profile=default")
        try:
            r = run_ctl("start", mnt, "--wait", env=env, timeout=120)
            assert r.returncode == EXIT_OK, r.stdout + r.stderr
            assert status(mnt)["state"] == "completed"
            m.stop()
        except BaseException:
            m.kill()
            raise
    finally:
        if proc is not None:
            force_unmount(mnt)
            proc.kill()
            proc.wait()
        fake.stop()


def test_follow_ends_when_daemon_stops(world):
    """A clean stop (SIGTERM, as systemd does) gives blocked event readers end-of-file: follow
    exits 0 on its own and does not keep the mount busy."""
    fake, env, m = world
    p = subprocess.Popen([str(SYNCCTL), "follow", str(m.mountpoint)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: has_open(p.pid, "events"),
                   what="follow to open .sync/events")
        m.proc.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        assert m.proc.wait(timeout=30) == 0, m.output()
    finally:
        p.kill()
    assert p.returncode == EXIT_OK, err
    m.kill()                   # nothing left to unmount; never twice through stop()
    m.stop = lambda: None


def test_dead_mount_is_explained(world):
    """After a SIGKILL the kernel keeps a dead mount: the tool says so and how to clear it."""
    fake, env, m = world
    m.proc.kill()
    m.proc.wait()
    try:
        for args in (("status",), ("start", "--wait"), ("follow",)):
            r = run_ctl(args[0], m.mountpoint, *args[1:], env=env)
            assert r.returncode == 1, (args, r)
            assert "the daemon is gone" in r.stderr and "fusermount3 -u" in r.stderr, r.stderr
    finally:
        m.kill()
    m.stop = lambda: None
