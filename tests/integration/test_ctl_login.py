"""onedrive-syncctl login against the fake server's device-code flow: approved (token stored
0600 where the daemon reads it), declined, expired, and no client id configured."""

import os
import stat
import subprocess

import pytest

from ctl_helpers import (EXIT_LOGIN_DECLINED, EXIT_LOGIN_EXPIRED, EXIT_NOT_CONFIGURED, EXIT_OK,
                         FAKE_GRAPH, SYNCCTL, FakeGraph, run_ctl, wait_until)

if not SYNCCTL.exists():
    pytest.skip(f"{SYNCCTL} not built", allow_module_level=True)


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    e["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    e["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    e["HOME"] = str(tmp_path)
    # The daemon's override of the config file: a developer's own must not leak in.
    e.pop("ONEDRIVE_SYNCFS_CONFIG", None)
    return e


@pytest.fixture
def fake(tmp_path):
    if not FAKE_GRAPH.exists():
        pytest.skip(f"the fake Graph server is not built ({FAKE_GRAPH})")
    # Poll every second so a test takes seconds, not the real service's 5 s steps.
    f = FakeGraph(tmp_path, "--device-interval", "1")
    yield f
    f.stop()


def write_config(env, fake, profile="default", client_id="test-client"):
    d = os.path.join(env["XDG_CONFIG_HOME"], "onedrive-syncfs")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config"), "w") as f:
        f.write(f"[{profile}]\n")
        if client_id:
            f.write(f"client_id={client_id}\n")
        f.write(f"login_url={fake.info['login_url']}\n")
        f.write(f"graph_url={fake.info['graph_url']}\n")


def write_config_file(path, fake, token_file, profile="default", client_id="test-client"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[{profile}]\nclient_id={client_id}\nlogin_url={fake.info['login_url']}\n"
                    f"graph_url={fake.info['graph_url']}\ntoken_file={token_file}\n")


def start_login(env, *args):
    return subprocess.Popen([str(SYNCCTL), "login", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def read_code(p):
    line = p.stdout.readline()
    assert line.startswith("To sign in, open "), line
    return line.split()[-1]


def test_no_client_id(env, tmp_path):
    r = run_ctl("login", "--profile", "work", env=env)
    assert r.returncode == EXIT_NOT_CONFIGURED
    assert "no client id for profile 'work'" in r.stderr
    assert "client_id=ID" in r.stderr and "--client-id" in r.stderr
    assert not os.path.exists(os.path.join(env["XDG_CONFIG_HOME"], "onedrive-syncfs", "work", "token.json"))


def test_login_approved(env, fake):
    write_config(env, fake, profile="work")
    p = start_login(env, "--profile", "work")
    try:
        code = read_code(p)
        fake.admin("POST", "devicecode/approve", {"user_code": code})
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == EXIT_OK, err
    token = os.path.join(env["XDG_CONFIG_HOME"], "onedrive-syncfs", "work", "token.json")
    assert "Signed in" in out and token in out
    st = os.stat(token)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert os.path.getsize(token) > 0
    # No token or code in what the tool printed.
    with open(token) as f:
        body = f.read()
    assert '"refresh_token"' in body or "refresh" in body


def test_login_flags_override_config(env, fake, tmp_path):
    write_config(env, fake, client_id=None)
    token = tmp_path / "elsewhere" / "t.json"
    p = start_login(env, "--client-id", "from-flag", "--token-file", str(token))
    try:
        code = read_code(p)
        fake.admin("POST", "devicecode/approve", {"user_code": code})
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == EXIT_OK, err
    assert stat.S_IMODE(os.stat(token).st_mode) == 0o600


@pytest.mark.parametrize("op,code,words", [("decline", EXIT_LOGIN_DECLINED, "declined"),
                                           ("expire", EXIT_LOGIN_EXPIRED, "expired")])
def test_login_refused(env, fake, op, code, words):
    write_config(env, fake)
    p = start_login(env)
    try:
        user_code = read_code(p)
        fake.admin("POST", f"devicecode/{op}", {"user_code": user_code})
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == code, (out, err)
    assert words in err
    assert not os.path.exists(os.path.join(env["XDG_CONFIG_HOME"], "onedrive-syncfs", "default", "token.json"))


def approve_login(env, fake, *args):
    p = start_login(env, *args)
    try:
        code = read_code(p)
        fake.admin("POST", "devicecode/approve", {"user_code": code})
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == EXIT_OK, err
    return out


def test_login_reads_config_named_by_environment(env, fake, tmp_path):
    # The daemon's rule: ONEDRIVE_SYNCFS_CONFIG, when set, replaces the XDG config file. A
    # login that read the XDG file would store the token where the daemon never looks.
    xdg_token = tmp_path / "xdg-token.json"
    write_config_file(tmp_path / "config" / "onedrive-syncfs" / "config", fake, xdg_token)
    env_token = tmp_path / "env-token" / "token.json"
    env["ONEDRIVE_SYNCFS_CONFIG"] = str(tmp_path / "other.conf")
    write_config_file(tmp_path / "other.conf", fake, env_token)
    out = approve_login(env, fake)
    assert str(env_token) in out
    assert stat.S_IMODE(os.stat(env_token).st_mode) == 0o600
    assert not xdg_token.exists()
    assert not (tmp_path / "config" / "onedrive-syncfs" / "default" / "token.json").exists()


def test_login_config_flag_beats_environment(env, fake, tmp_path):
    env_token = tmp_path / "env-token.json"
    env["ONEDRIVE_SYNCFS_CONFIG"] = str(tmp_path / "env.conf")
    write_config_file(tmp_path / "env.conf", fake, env_token)
    flag_token = tmp_path / "flag-token.json"
    write_config_file(tmp_path / "flag.conf", fake, flag_token)
    approve_login(env, fake, "--config", str(tmp_path / "flag.conf"))
    assert stat.S_IMODE(os.stat(flag_token).st_mode) == 0o600
    assert not env_token.exists()


def test_login_environment_names_missing_config(env, tmp_path):
    # Like the daemon, a missing file reads as empty: the XDG file is not consulted instead.
    d = tmp_path / "config" / "onedrive-syncfs"
    d.mkdir(parents=True)
    # Its login_url is a closed loopback port: a tool that read it fails fast, offline.
    (d / "config").write_text("[default]\nclient_id=from-xdg\nlogin_url=http://127.0.0.1:9\n")
    env["ONEDRIVE_SYNCFS_CONFIG"] = str(tmp_path / "missing.conf")
    r = run_ctl("login", env=env)
    assert r.returncode == EXIT_NOT_CONFIGURED, r.stderr
    assert str(tmp_path / "missing.conf") in r.stderr
