"""Fixtures for the integration suites: a running fake Graph server on free loopback ports.

`fake_factory(*args)` starts tools/fake-graph with the given arguments, waits for its ready
JSON line and hands back a `Fake`. Every fake is stopped (SIGTERM, must exit 0) when the
test ends, and the test fails if the fake wrote anything to stderr that looks like an
unexpected error: a GLib warning/critical, a sanitizer report, a crash. A test that provokes
a logged warning on purpose says so with `fake.allow_log(regex)`.
"""

import base64
import http.client
import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse

import pytest

FAKE_GRAPH = os.environ.get("FAKE_GRAPH")

# What counts as "the fake logged an unexpected error".
BAD_LOG = re.compile(r"-WARNING \*\*|-CRITICAL \*\*|-ERROR \*\*|ERROR: \w+Sanitizer|runtime error:|"
                     r"Segmentation fault|Aborted|core dumped")


def quickxor(data: bytes) -> str:
    """Independent QuickXorHash oracle for the tests (protocol brief, Hashes section)."""
    acc = 0
    bit = 0
    for b in data:
        acc ^= b << bit
        if bit > 152:
            acc ^= b >> (160 - bit)      # the bits past 160 wrap to bit 0
        bit = (bit + 11) % 160
    acc &= (1 << 160) - 1
    raw = bytearray(acc.to_bytes(20, "little"))
    length = len(data).to_bytes(8, "little")
    for i in range(8):
        raw[12 + i] ^= length[i]
    return base64.b64encode(bytes(raw)).decode()


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


# CA bundle for https URLs (set by TLS tests while a TLS fake runs).
CAFILE = {"path": None}


def request(url, method="GET", headers=None, body=None, timeout=30):
    """One HTTP request on a fresh connection; redirects are never followed."""
    u = urllib.parse.urlsplit(url)
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    kwargs = {}
    if u.scheme == "https":
        import ssl
        kwargs["context"] = ssl.create_default_context(cafile=CAFILE["path"])
    conn = conn_cls(u.hostname, u.port, timeout=timeout, **kwargs)
    try:
        path = u.path + ("?" + u.query if u.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.getheaders(), data)
    finally:
        conn.close()


class Fake:
    def __init__(self, args, tmpdir):
        if not FAKE_GRAPH:
            pytest.fail("FAKE_GRAPH is not set (run through meson test)")
        self.args = list(args)
        self.stderr_path = os.path.join(tmpdir, f"fake-graph-{os.getpid()}-{id(self)}.log")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([FAKE_GRAPH, *self.args], stdout=subprocess.PIPE,
                                     stderr=self._stderr, stdin=subprocess.DEVNULL)
        self.allowed = []
        self.ready = self._wait_ready()
        self.graph_url = self.ready["graph_url"]
        self.login_url = self.ready["login_url"]
        self.admin_url = self.ready["admin_url"]
        self.download_url = self.ready["download_url"]
        self.drive_id = self.ready["drive_id"]
        self.root_id = self.ready["root_id"]
        self._token = None
        self.stopped = False

    def _wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"fake-graph exited with {self.proc.returncode} before it was ready:\n"
                            + self.log())
            r, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                line += chunk
                if b"\n" in line:
                    return json.loads(line.split(b"\n", 1)[0])
        self.proc.kill()
        self.proc.wait()
        pytest.fail("fake-graph did not print its ready line in time:\n" + self.log())

    def log(self):
        if not self._stderr.closed:
            self._stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def allow_log(self, pattern):
        self.allowed.append(re.compile(pattern))

    def stop(self):
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "timeout"
        self.proc.stdout.close()
        self._stderr.close()
        return self.proc.returncode

    def unexpected_log_lines(self):
        bad = []
        for line in self.log().splitlines():
            if BAD_LOG.search(line) and not any(p.search(line) for p in self.allowed):
                bad.append(line)
        return bad

    # --- admin API ---

    def admin(self, path, body=None, method=None, expect=200):
        method = method or ("POST" if body is not None else "GET")
        data = json.dumps(body).encode() if body is not None else None
        r = request(f"{self.admin_url}/{path}", method,
                    {"Content-Type": "application/json"} if data else {}, data)
        if expect is not None:
            assert r.status == expect, f"admin {path}: {r.status} {r.body!r}"
        return r.json() if r.body else None

    def mint(self, lifetime=None):
        return self.admin("token", {"lifetime": lifetime} if lifetime else {})

    @property
    def token(self):
        if self._token is None:
            self._token = self.mint()["access_token"]
        return self._token

    def faults(self, **settings):
        return self.admin("faults", settings)

    def stats(self):
        return self.admin("stats")

    # --- Graph ---

    def url(self, path):
        return path if path.startswith("http") else self.graph_url + path

    def get(self, path, token=True, headers=None):
        h = dict(headers or {})
        if token is True:
            h["Authorization"] = f"Bearer {self.token}"
        elif token:
            h["Authorization"] = f"Bearer {token}"
        return request(self.url(path), "GET", h)

    def get_json(self, path, **kw):
        r = self.get(path, **kw)
        assert r.status == 200, r
        return r.json()

    def pages(self, first):
        """Follows nextLinks from @first; returns (pages, deltaLink or None)."""
        pages = []
        link = first
        for _ in range(100000):
            page = self.get_json(link)
            pages.append(page)
            if "@odata.nextLink" in page:
                nxt = page["@odata.nextLink"]
                assert nxt.startswith(self.login_url + "/v1.0/"), nxt
                link = nxt
                continue
            return pages, page.get("@odata.deltaLink")
        raise AssertionError("endless paging")

    def delta_all(self, first):
        pages, delta = self.pages(first)
        items = [it for p in pages for it in p["value"]]
        return items, delta, pages

    def oauth(self, endpoint, form, tenant="common"):
        body = urllib.parse.urlencode(form).encode()
        return request(f"{self.login_url}/{tenant}/oauth2/v2.0/{endpoint}", "POST",
                       {"Content-Type": "application/x-www-form-urlencoded"}, body)

    def download(self, item_path_or_id, headers=None):
        """GET /content (302) then the download URL without Authorization."""
        if item_path_or_id.startswith("/"):
            enc = urllib.parse.quote(item_path_or_id)
            r = self.get(f"/me/drive/root:{enc}:/content")
        else:
            r = self.get(f"/me/drive/items/{urllib.parse.quote(item_path_or_id)}/content")
        assert r.status == 302, r
        loc = r.header("Location")
        assert loc.startswith(self.download_url + "/"), loc
        return request(loc, "GET", headers or {}), loc


def make_tree(root):
    """The standard small drive used by most tests."""
    files = {
        "Docs/readme.txt": b"hello",
        "Docs/Reports/q1.txt": b"hello world",
        "Docs/Reports/q2.bin": bytes(range(256)) * 40,
        "Docs/a b#c%d+e.txt": b"The quick brown fox jumps over the lazy dog",
        "Photos/empty.jpg": b"",
        "Photos/2024/img1.jpg": os.urandom(3000),
        "top.txt": b"x" * 5000,
    }
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    os.makedirs(os.path.join(root, "EmptyFolder"), exist_ok=True)
    return files


@pytest.fixture
def fake_factory(tmp_path):
    fakes = []

    def start(*args):
        f = Fake(args, str(tmp_path))
        fakes.append(f)
        return f

    yield start
    problems = []
    for f in fakes:
        rc = f.stop()
        if rc != 0:
            problems.append(f"fake-graph exited with {rc}")
        bad = f.unexpected_log_lines()
        if bad:
            problems.append("fake-graph logged unexpected errors:\n" + "\n".join(bad))
    if problems:
        pytest.fail("\n".join(problems) + "\n--- log ---\n" + (fakes[-1].log() if fakes else ""))


@pytest.fixture
def tree(tmp_path):
    d = tmp_path / "drive"
    d.mkdir()
    files = make_tree(str(d))
    return str(d), files


@pytest.fixture
def fake(fake_factory, tree):
    return fake_factory("--data", tree[0])
