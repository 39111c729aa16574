"""Real mounts against the fake Graph server, for the test_mount_*.py suites.

A test gets a `FakeGraph` (the fake server as a child process, a drive built from a directory
the test fills) and a `Mount` (the daemon in the foreground as a child). Mount.start() polls
until the mount point is a mount and fails at once if the daemon died; Mount.stop() unmounts
with fusermount3 -u and demands exit code 0 and no unexpected warning in the daemon's log.
Whatever happens, the finaliser lazily unmounts and ends the daemon (SIGTERM, then SIGKILL):
no test leaves a mount or a process behind.

Waiting is done on events, not on sleeps: Mount.wait_status() blocks in poll(2) on
.sync/status, which the daemon wakes whenever the status changes.
"""

import base64
import json
import os
import pathlib
import re
import select
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

BUILD = pathlib.Path(os.environ.get("ODSF_BUILD_DIR", pathlib.Path(__file__).resolve().parents[2] / "build"))
DAEMON = pathlib.Path(os.environ.get("ODSF_DAEMON", BUILD / "onedrive-syncfs"))
FAKE_GRAPH = pathlib.Path(os.environ.get("ODSF_FAKE_GRAPH", BUILD / "tools" / "fake-graph" / "fake-graph"))

TOKEN = "odsf-mount-test-token"
TERMINAL = {"completed", "completed_with_errors", "cancelled", "failed"}

# Daemon log lines that count as a problem unless the test says it expects them.
PROBLEM = re.compile(r" (WARNING|CRITICAL|ERROR): |ERROR: \w+Sanitizer|runtime error:")


def require_fuse():
    """Skips (never passes silently) when this machine cannot mount FUSE."""
    if shutil.which("fusermount3") is None:
        pytest.skip("fusermount3 is not installed")
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as e:
        pytest.skip(f"/dev/fuse cannot be used: {e.strerror}")
    os.close(fd)
    for exe in (DAEMON, FAKE_GRAPH):
        if not exe.exists():
            pytest.skip(f"{exe} is not built")


def is_mount(path):
    try:
        return os.path.ismount(path)
    except OSError:
        return False


class FakeGraph:
    """The fake server serving `drive_dir` (files become items; folders folders), or with
    drive_dir None whatever `args` say (--synthetic N,SIZE,FOLDERS). It starts on first use,
    so a test fills drive_dir first; later changes go through the admin API."""

    def __init__(self, workdir: pathlib.Path, drive_dir: pathlib.Path, args=()):
        self.workdir = workdir
        self.drive_dir = drive_dir
        self.args = list(args)
        self.proc = None

    def __getattr__(self, name):
        # graph_url, login_url, admin_url, info: available once the server runs.
        if name in ("graph_url", "login_url", "admin_url", "info"):
            self.ensure_started()
            return self.__dict__[name]
        raise AttributeError(name)

    def ensure_started(self):
        if self.proc is not None:
            return
        self.log_path = self.workdir / "fake-graph.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(FAKE_GRAPH), *(["--data", str(self.drive_dir)] if self.drive_dir is not None else []),
             "--access-token", TOKEN, "--die-with-parent", *self.args],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            raise AssertionError("fake-graph did not start:\n" + self.log_path.read_text())
        self.info = json.loads(line)
        self.graph_url = self.info["graph_url"]
        self.login_url = self.info["login_url"]
        self.admin_url = self.info["admin_url"]

    def admin(self, path, body=None):
        self.ensure_started()
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.admin_url}/{path}", data=data,
                                     method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def stats(self):
        return self.admin("stats")

    def reset_stats(self):
        return self.admin("stats/reset", {})

    def faults(self, **switches):
        return self.admin("faults", switches)

    def add(self, path, content: bytes, parents=True):
        return self.admin("items/add", {"path": path, "parents": parents,
                                        "content_base64": base64.b64encode(content).decode()})

    def add_folder(self, path):
        return self.admin("items/add", {"path": path, "folder": True, "parents": True})

    def modify(self, path, content: bytes):
        return self.admin("items/modify", {"path": path,
                                           "content_base64": base64.b64encode(content).decode()})

    def delete(self, path):
        return self.admin("items/delete", {"path": path})

    def rename(self, path, name):
        return self.admin("items/rename", {"path": path, "name": name})

    def close(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._log.close()


def write_token(path: pathlib.Path):
    """A token file the Graph client accepts without refreshing: the fake takes TOKEN forever."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"refresh_token": "unused-refresh-token", "access_token": TOKEN,
           "expires_at": int(time.time()) + 10 * 365 * 86400}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)


class Mount:
    """The daemon in the foreground, mounted at workdir/mnt."""

    def __init__(self, workdir: pathlib.Path, fake: FakeGraph, options=(), allowed_warnings=(), mnt=None):
        self.workdir = workdir
        self.fake = fake
        self.mnt = pathlib.Path(mnt) if mnt is not None else workdir / "mnt"
        self.cache = workdir / "cache"
        self.config_home = workdir / "config"
        self.token_file = self.config_home / "onedrive-syncfs" / "default" / "token.json"
        self.options = list(options)
        self.extra_env = {}    # e.g. a test seam of the daemon, for the next start()
        self.allowed = [re.compile(p) for p in allowed_warnings]
        self.proc = None
        self.log_path = workdir / "daemon.log"
        self._log_offset = 0
        self.mnt.mkdir(exist_ok=True)
        write_token(self.token_file)

    @property
    def sync(self):
        return self.mnt / ".sync"

    def command(self, *extra_options, mountpoint=None):
        opts = [f"graph_url={self.fake.graph_url}", f"login_url={self.fake.login_url}",
                f"cache_dir={self.cache}", f"token_file={self.token_file}", "workers=4", *self.options,
                *extra_options]
        return [str(DAEMON), "-f", "-o", ",".join(opts), str(mountpoint or self.mnt)]

    def env(self):
        env = dict(os.environ)
        env["XDG_CONFIG_HOME"] = str(self.config_home)
        env["XDG_CACHE_HOME"] = str(self.workdir / "xdg-cache")
        env["ONEDRIVE_SYNCFS_CONFIG"] = str(self.workdir / "no-config")
        env.pop("G_DEBUG", None)
        env.update(self.extra_env)
        return env

    def start(self, *extra_options, timeout=15.0):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log_path, "a")
        self._log_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(self.command(*extra_options), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, env=self.env())
        log.close()
        deadline = time.monotonic() + timeout
        while not is_mount(self.mnt):
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode} before mounting:\n"
                                     + self.log())
            if time.monotonic() > deadline:
                raise AssertionError("daemon did not mount in time:\n" + self.log())
            time.sleep(0.01)
        return self

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def problems(self):
        """Warnings and worse in this start's log that the test did not announce."""
        text = self.log()[self._log_offset:]
        return [line for line in text.splitlines()
                if PROBLEM.search(line) and not any(p.search(line) for p in self.allowed)]

    def stop(self, timeout=30.0):
        """fusermount3 -u, then the daemon must exit 0 with a clean log."""
        r = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, text=True)
        assert r.returncode == 0, f"fusermount3 -u failed: {r.stderr}"
        return self.wait_exit(timeout)

    def wait_exit(self, timeout=30.0, expect=0):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("daemon did not exit after unmount:\n" + self.log())
        assert rc == expect, f"daemon exited with {rc}, expected {expect}:\n" + self.log()
        assert not is_mount(self.mnt)
        assert not self.problems(), "unexpected warnings:\n" + "\n".join(self.problems())
        return rc

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        """SIGKILL: the mount stays behind, dead; clear it like a user would."""
        self.proc.kill()
        self.proc.wait(10)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)

    def cleanup(self):
        if is_mount(self.mnt) or self._dead_mount():
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _dead_mount(self):
        try:
            os.stat(self.mnt)
            return False
        except OSError:
            return True

    # ---- control files ----

    def status(self):
        with open(self.sync / "status") as f:
            return json.loads(f.read())

    def start_sync(self, words=""):
        with open(self.sync / "start", "w") as f:
            f.write(words + "\n")

    def cancel(self):
        with open(self.sync / "cancel", "w") as f:
            f.write("\n")

    def wait_status(self, pred, timeout=60.0, what="status condition"):
        """Blocks in poll(2) on .sync/status until pred(status) holds."""
        deadline = time.monotonic() + timeout
        while True:
            fd = os.open(self.sync / "status", os.O_RDONLY)
            try:
                doc = json.loads(os.read(fd, 1 << 20) or b"{}")
                if pred(doc):
                    return doc
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; status: {json.dumps(doc)}")
                p = select.poll()
                p.register(fd, select.POLLIN | select.POLLPRI)
                p.poll(int(min(left, 5.0) * 1000))
            finally:
                os.close(fd)

    def sync_and_wait(self, words="", timeout=120.0, expect="completed"):
        # A run started now finishes with a new run_id: wait for that, not an old terminal state.
        before = self.status().get("run_id")
        self.start_sync(words)
        doc = self.wait_status(lambda s: s.get("state") in TERMINAL and s.get("run_id") != before,
                               timeout, "the run to finish")
        if expect is not None:
            assert doc["state"] == expect, json.dumps(doc, indent=1)
        return doc


def remote_tree(root: pathlib.Path):
    """{relative path: bytes or None for folders} of a local directory tree."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.normpath(os.path.join(rel, f))] = fh.read()
    return out


def mounted_tree(mnt: pathlib.Path, skip_control=True):
    out = {}
    for dirpath, dirnames, filenames in os.walk(mnt):
        rel = os.path.relpath(dirpath, mnt)
        if skip_control and rel == ".":
            dirnames[:] = [d for d in dirnames if d != ".sync"]
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.normpath(os.path.join(rel, f))] = fh.read()
    return out


@pytest.fixture
def drive_dir(tmp_path):
    d = tmp_path / "drive"
    d.mkdir()
    return d


@pytest.fixture
def fake(tmp_path, drive_dir, request):
    """The fake server over drive_dir; a test fills drive_dir before asking for this."""
    require_fuse()
    args = getattr(request, "param", ())
    server = FakeGraph(tmp_path, drive_dir, args)
    yield server
    server.close()


@pytest.fixture
def mount(tmp_path, fake):
    """A Mount not yet started; the finaliser guarantees nothing is left mounted or running."""
    # ODSF_TEST_MOUNT_OPTIONS=debug (comma-separated) adds options to every mount: the request
    # trace lands in the test's daemon.log.
    extra = os.environ.get("ODSF_TEST_MOUNT_OPTIONS")
    m = Mount(tmp_path, fake, options=extra.split(",") if extra else ())
    try:
        yield m
    finally:
        m.cleanup()
