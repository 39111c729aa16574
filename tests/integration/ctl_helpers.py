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
FAKE_GRAPH = pathlib.Path(os.environ.get("ODSF_FAKE_GRAPH", BUILD / "tools" / "fake-graph" / "fake-graph"))

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


class FakeGraph:
    """The fake Graph/OAuth server (tools/fake-graph), started on loopback ports it picks;
    its first stdout line is a JSON object with graph_url, login_url and admin_url."""

    def __init__(self, tmp, *args, synthetic="3,1K,1"):
        self.proc = subprocess.Popen([str(FAKE_GRAPH), "--synthetic", synthetic, "--die-with-parent", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            raise AssertionError(f"fake-graph did not start: {err}")
        self.info = json.loads(line)

    def admin(self, method, path, body=None):
        import urllib.request
        data = json.dumps(body or {}).encode() if method == "POST" else None
        req = urllib.request.Request(f"{self.info['admin_url']}/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"{}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def isolated_env(tmp):
    """XDG dirs and HOME in the test's temp dir, so nothing touches the real user's files."""
    e = dict(os.environ)
    e["XDG_CONFIG_HOME"] = str(tmp / "config")
    e["XDG_CACHE_HOME"] = str(tmp / "cache")
    e["HOME"] = str(tmp)
    return e


def write_profile(env, fake, profile="default", client_id="test-client", extra=""):
    d = pathlib.Path(env["XDG_CONFIG_HOME"]) / "onedrive-syncfs"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "config", "a") as f:
        f.write(f"[{profile}]\n")
        if client_id:
            f.write(f"client_id={client_id}\n")
        f.write(f"login_url={fake.info['login_url']}\n")
        f.write(f"graph_url={fake.info['graph_url']}\n")
        f.write(extra)
    return d / "config"


def login(env, fake, *args):
    """Signs in through `onedrive-syncctl login`, approving the code with the fake's admin API.
    Returns the completed process."""
    p = subprocess.Popen([str(SYNCCTL), "login", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline()
        assert line.startswith("To sign in, open "), (line, p.stderr.read() if p.poll() is not None else "")
        fake.admin("POST", "devicecode/approve", {"user_code": line.split()[-1]})
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    return subprocess.CompletedProcess(p.args, p.returncode, line + out, err)


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[1].encode().decode("unicode_escape") == path:
                return parts[2]
    return None


def force_unmount(path):
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


class Daemon:
    """The real daemon in the foreground (-f) as a child. Waits until the mount point is a mount
    (failing fast if the child died); stop() unmounts with fusermount3 -u and expects exit 0.
    Never leaves a mount behind."""

    def __init__(self, tmp, env, mountpoint, *opts):
        self.mountpoint = pathlib.Path(mountpoint)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.log = open(tmp / f"daemon-{self.mountpoint.name}.log", "w+")
        args = [str(DAEMON), "-f"]
        for o in opts:
            args += ["-o", o]
        args.append(str(self.mountpoint))
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"daemon did not mount: {self.output()}")
            time.sleep(0.02)

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        r = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True, text=True)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"daemon did not exit after unmount ({r.stderr}): {self.output()}")
        assert rc == 0, f"daemon exit {rc}: {self.output()}"

    def kill(self):
        force_unmount(self.mountpoint)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
