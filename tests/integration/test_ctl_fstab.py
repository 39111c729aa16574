"""Mounting through mount(8) and /etc/fstab (docs/fstab.md).

Part one pins down what mount(8) and mount.fuse3 hand to the program, with a stand-in that
records its argv: that is the contract src/main.c must accept. Part two mounts the real daemon
through `mount -T FSTAB` and through `mount.fuse3` with all of the fstab noise, against the
fake server, and drives it with onedrive-syncctl.

mount -T (an alternative fstab) and a mount helper run by mount(8) need root; the tests skip,
saying so, when not root or when the tools are missing."""

import os
import pathlib
import shutil
import subprocess

import pytest

from ctl_helpers import (DAEMON, EXIT_OK, FAKE_GRAPH, SYNCCTL, Daemon, FakeGraph, force_unmount,
                         is_mounted, isolated_env, login, run_ctl, wait_until, write_profile)

MOUNT_FUSE3 = shutil.which("mount.fuse3") or "/sbin/mount.fuse3"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mount -T and fstab helpers need root"),
    pytest.mark.skipif(not os.path.exists(MOUNT_FUSE3), reason="mount.fuse3 (package fuse3) missing"),
    pytest.mark.skipif(shutil.which("mount") is None, reason="mount(8) missing"),
]

NOISE = "noauto,_netdev,nofail,x-systemd.automount,x-systemd.after=network-online.target"


@pytest.fixture
def standin(tmp_path):
    """An executable named onedrive-syncfs that records its argv, one argument per line."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv.txt"
    prog = bindir / "onedrive-syncfs"
    prog.write_text(f"#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > {record}\n")
    prog.chmod(0o755)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    return prog, record, mnt


def opts_of(argv):
    assert argv[2] == "-o", argv
    return argv[3].split(",")


def test_fstab_line_argv(standin, tmp_path):
    prog, record, mnt = standin
    fstab = tmp_path / "fstab"
    # The classic `fuse` type spelling names the program by path, so no install is needed;
    # mount(8) handles `fuse.onedrive-syncfs` the same way once the program is on /bin/sh's PATH.
    fstab.write_text(f"{prog}#work {mnt} fuse defaults,{NOISE},comment=x,source=/My\\040Docs,sync_on_mount 0 0\n")
    r = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    argv = record.read_text().splitlines()
    assert argv[:2] == ["work", str(mnt)], argv        # PROFILE MOUNTPOINT
    opts = opts_of(argv)
    assert "source=/My Docs" in opts and "sync_on_mount" in opts
    for gone in ("noauto", "_netdev", "nofail", "defaults", "comment=x"):
        assert gone not in opts, opts
    assert not [o for o in opts if o.startswith("x-")], opts
    assert "rw" in opts                                # generic flags the daemon must leave to libfuse


def test_fstab_user_argv(standin, tmp_path):
    prog, record, mnt = standin
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{prog}#default {mnt} fuse {NOISE},users,source=/D 0 0\n")
    r = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    argv = record.read_text().splitlines()
    assert argv[:2] == ["default", str(mnt)]
    opts = opts_of(argv)
    assert "users" not in opts and "user" not in opts
    assert {"nosuid", "nodev", "noexec"} <= set(opts), opts   # what `user` implies


def test_mount_fuse3_direct_argv(standin):
    """mount.fuse3 run by hand (or by a systemd mount unit) does not strip x-* options."""
    prog, record, mnt = standin
    env = dict(os.environ, PATH=f"{prog.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    r = subprocess.run([MOUNT_FUSE3, "default", str(mnt), "-t", "onedrive-syncfs", "-o",
                        f"{NOISE},user,profile=a"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    argv = record.read_text().splitlines()
    assert argv[:2] == ["default", str(mnt)]
    opts = opts_of(argv)
    assert "profile=a" in opts
    assert "x-systemd.automount" in opts               # so the daemon must ignore x-* itself
    for gone in ("noauto", "_netdev", "nofail", "user"):
        assert gone not in opts


# ---- the real daemon ----------------------------------------------------------------------

@pytest.fixture
def fake(tmp_path):
    if not FAKE_GRAPH.exists():
        pytest.skip(f"the fake Graph server is not built ({FAKE_GRAPH})")
    f = FakeGraph(tmp_path, "--device-interval", "1")
    yield f
    f.stop()


@pytest.fixture
def signed_in(tmp_path, fake):
    if not DAEMON.exists():
        pytest.skip(f"the daemon is not built yet ({DAEMON})")
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("/dev/fuse or fusermount3 missing")
    env = isolated_env(tmp_path)
    write_profile(env, fake, profile="work")
    r = login(env, fake, "--profile", "work")
    assert r.returncode == EXIT_OK, r.stderr
    return env


def wait_daemon_gone(mnt):
    wait_until(lambda: not is_mounted(mnt), timeout=30, what=f"{mnt} to be unmounted")


def mount_and_drive(tmp_path, env, how, opts):
    """Mounts the real daemon for profile `work` through mount(8) or mount.fuse3, runs a sync
    with onedrive-syncctl, unmounts. Returns the failed mount's CompletedProcess, or None."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    try:
        if how == "fstab":
            fstab = tmp_path / "fstab"
            fstab.write_text(f"{DAEMON}#work {mnt} fuse {opts} 0 0\n")
            r = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True, text=True,
                               env=env, timeout=60)
        else:
            r = subprocess.run([MOUNT_FUSE3, f"{DAEMON}#work", str(mnt), "-o", opts],
                               capture_output=True, text=True, env=env, timeout=60)
        if r.returncode != 0:
            return r
        # The daemon detaches only once the mount is up: when mount returns, it is there.
        assert is_mounted(mnt) == "fuse.onedrive-syncfs"
        assert (mnt / ".sync" / "status").exists()
        s = run_ctl("start", mnt, "--wait", env=env, timeout=120)
        assert s.returncode == EXIT_OK, s.stdout + s.stderr
        st = run_ctl("status", mnt, env=env)
        assert st.returncode == EXIT_OK and st.stdout.startswith("State:     completed")
        u = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
        assert u.returncode == 0, u.stderr
        wait_daemon_gone(mnt)
        return None
    finally:
        if is_mounted(mnt):
            force_unmount(mnt)


@pytest.mark.parametrize("how", ["fstab", "mount.fuse3"])
def test_real_mount(tmp_path, fake, signed_in, how):
    """PROFILE MOUNTPOINT and the noise of an fstab line (mount.fuse3 run directly passes x-*)."""
    r = mount_and_drive(tmp_path, signed_in, how, f"{NOISE},cache_dir={tmp_path / 'cache' / 'work'}")
    assert r is None, r.stdout + r.stderr


def test_real_mount_fstab_words_reach_daemon(tmp_path, fake, signed_in):
    """mount.fuse3 run by hand passes `defaults` and `comment=` on: the daemon must drop them."""
    r = mount_and_drive(tmp_path, signed_in, "mount.fuse3",
                        f"defaults,comment=x,comment=systemd.automount,{NOISE},"
                        f"cache_dir={tmp_path / 'cache' / 'work'}")
    assert r is None, r.stdout + r.stderr
