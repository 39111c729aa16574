"""`meson install --destdir` into a temporary directory installs every file a user needs:
binaries, man pages, the systemd user unit, bash completion — and nothing outside the prefix."""

import os
import re
import pathlib
import shutil
import subprocess

import pytest

from ctl_helpers import BUILD, SOURCE, DAEMON as BUILT_DAEMON

PREFIX = "/usr/local"

EXPECTED = [
    "bin/onedrive-syncctl",
    "share/man/man1/onedrive-syncctl.1",
    "share/man/man1/onedrive-syncfs.1",
    "lib/systemd/user/onedrive-syncfs@.service",
    "share/bash-completion/completions/onedrive-syncctl",
    "share/bash-completion/completions/onedrive-syncfs",
]
# The daemon is installed once src/main.c is built (the fs layer).
DAEMON = "bin/onedrive-syncfs"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if not (BUILD / "build.ninja").exists():
        pytest.skip(f"no configured build in {BUILD}")
    meson = shutil.which("meson")
    if not meson:
        pytest.skip("meson not on PATH")
    prefix = subprocess.run([meson, "introspect", "--buildoptions", str(BUILD)],
                            capture_output=True, text=True, check=True).stdout
    dest = tmp_path_factory.mktemp("destdir")
    r = subprocess.run([meson, "install", "-C", str(BUILD), "--no-rebuild", "--quiet",
                        "--destdir", str(dest)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    import json
    opts = {o["name"]: o["value"] for o in json.loads(prefix)}
    root = dest / opts["prefix"].lstrip("/")
    return dest, root, opts


def test_expected_files(installed):
    dest, root, opts = installed
    missing = [p for p in EXPECTED if not (root / p).is_file()]
    assert not missing, f"not installed under {root}: {missing}"
    assert os.access(root / "bin/onedrive-syncctl", os.X_OK)
    if BUILT_DAEMON.exists():
        assert (root / DAEMON).is_file() and os.access(root / DAEMON, os.X_OK)


def test_nothing_outside_prefix(installed):
    dest, root, opts = installed
    for path in dest.rglob("*"):
        if path.is_file():
            assert root in path.parents, f"{path} is outside the prefix {opts['prefix']}"


def plain(roff):
    """The words of a roff page without font changes and zero-width escapes."""
    return re.sub(r"\\f[BIRP]|\\&|\\", "", roff)


def test_man_pages_render(installed):
    dest, root, opts = installed
    for page in ("onedrive-syncctl.1", "onedrive-syncfs.1"):
        text = (root / "share/man/man1" / page).read_text()
        assert text.startswith(".") or "\n.TH" in text[:2000] or ".TH" in text, page
        assert ".SH EXIT STATUS" in text or '.SH "EXIT STATUS"' in text, page
    ctl = plain((root / "share/man/man1/onedrive-syncctl.1").read_text())
    for word in ("start", "cancel", "status", "follow", "login", "completed_with_errors"):
        assert word in ctl
    fs = plain((root / "share/man/man1/onedrive-syncfs.1").read_text())
    for opt in ("profile=", "source=", "workers=", "sync_interval=", "sync_on_mount", "cache_dir=",
                "graph_url=", "login_url=", "tenant=", "client_id=", "ca_file=", "max_file_size=",
                "allow_other", "verbose", "debug", ".sync/start", ".sync/cancel", ".sync/status",
                ".sync/events", ".sync/changes", "_netdev"):
        assert opt in fs, opt


def test_unit_points_at_installed_daemon(installed):
    dest, root, opts = installed
    unit = (root / "lib/systemd/user/onedrive-syncfs@.service").read_text()
    bindir = pathlib.Path(opts["prefix"]) / opts["bindir"]
    assert f"ExecStart={bindir}/onedrive-syncfs -f -o profile=%i " in unit
    assert "Restart=on-failure" in unit and "KillSignal=SIGTERM" in unit
    assert "RestartPreventExitStatus=2 3 6" in unit
    assert "@bindir@" not in unit
    analyze = shutil.which("systemd-analyze")
    if analyze:
        # verify needs an instance name and resolves ExecStart: point it at the staged tree.
        d = dest / "verify"
        d.mkdir()
        staged = unit.replace(f"{bindir}/onedrive-syncfs", str(root / "bin" / "onedrive-syncctl"))
        (d / "onedrive-syncfs@test.service").write_text(staged)
        r = subprocess.run([analyze, "verify", "--man=no", str(d / "onedrive-syncfs@test.service")],
                           capture_output=True, text=True)
        problems = [l for l in (r.stdout + r.stderr).splitlines()
                    if "onedrive-syncfs@test.service" in l and "Failed to" not in l]
        assert r.returncode == 0 or not problems, r.stdout + r.stderr


@pytest.mark.parametrize("cmd,line,want", [
    ("onedrive-syncctl", "onedrive-syncctl st", {"start", "status"}),
    ("onedrive-syncctl", "onedrive-syncctl start --", {"--full", "--clear-exclusions", "--wait", "--help"}),
    ("onedrive-syncctl", "onedrive-syncctl status --j", {"--json"}),
    ("onedrive-syncfs", "onedrive-syncfs -o sync_", {"sync_interval=", "sync_on_mount"}),
    ("onedrive-syncfs", "onedrive-syncfs -o workers=2,cache", {"workers=2,cache_dir="}),
])
def test_bash_completion(installed, cmd, line, want):
    assert complete(installed, cmd, line) == want


def test_bash_completion_profiles_from_the_config_login_reads(installed, tmp_path):
    # The same file as the daemon and login: ONEDRIVE_SYNCFS_CONFIG over the XDG one, and
    # login's --config over both.
    xdg = tmp_path / "xdg"
    (xdg / "onedrive-syncfs").mkdir(parents=True)
    (xdg / "onedrive-syncfs" / "config").write_text("[from-xdg]\n")
    (tmp_path / "env.conf").write_text("[work]\nclient_id=a\n[home]\n")
    (tmp_path / "flag.conf").write_text("[flagged]\n")
    env = dict(os.environ, XDG_CONFIG_HOME=str(xdg), ONEDRIVE_SYNCFS_CONFIG=str(tmp_path / "env.conf"))
    assert complete(installed, "onedrive-syncctl", "onedrive-syncctl login --profile ", env) == {"work", "home"}
    assert complete(installed, "onedrive-syncfs", "onedrive-syncfs -o profile=", env) == {"profile=work", "profile=home"}
    assert complete(installed, "onedrive-syncctl",
                    f"onedrive-syncctl login --config {tmp_path / 'flag.conf'} -p ", env) == {"flagged"}
    del env["ONEDRIVE_SYNCFS_CONFIG"]
    assert complete(installed, "onedrive-syncctl", "onedrive-syncctl login --profile ", env) == {"from-xdg"}


def complete(installed, cmd, line, env=None):
    """What bash completion offers for @line (the cursor at its end)."""
    dest, root, opts = installed
    bash = shutil.which("bash")
    if not bash:
        pytest.skip("no bash")
    script = root / "share/bash-completion/completions" / cmd
    words = line.split(" ")
    prog = f"""
source {script}
COMP_WORDS=({' '.join(repr(w) for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={line!r}
COMP_POINT={len(line)}
_{cmd.replace('-', '_')}
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    r = subprocess.run([bash, "--norc", "--noprofile", "-c", prog], capture_output=True, text=True,
                       cwd=dest, env=env)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


# ---- the option table against the man page and --help, so neither can drift ----------------

def option_table():
    """The daemon's -o words, read from raw_opts[] in src/fs/fs-options.c: (options, ignored).
    options: words a user sets ("workers=" takes a value, "allow_other" is a flag);
    ignored: fstab/mount(8) words the daemon accepts and drops, and prefixes it drops ("x-")."""
    src = (SOURCE / "src" / "fs" / "fs-options.c").read_text()
    table = re.search(r"static const struct fuse_opt raw_opts\[\] = \{(.*?)FUSE_OPT_END", src, re.S)
    assert table, "raw_opts[] not found in src/fs/fs-options.c"
    body = re.sub(r"/\*.*?\*/", "", table.group(1), flags=re.S)
    options, ignored = set(), set()
    for m in re.finditer(r'RAW_OPT \("([^"%]+)%s", \w+\)', body):
        options.add(m.group(1))
    for m in re.finditer(r'FUSE_OPT_KEY \("([^"]+)", (\w+)\)', body):
        word, key = m.groups()
        (ignored if key in ("FUSE_OPT_KEY_DISCARD", "KEY_MOUNT_WORD") else options).add(word)
    proc = re.search(r"raw_opt_proc \(.*?\n\}\n", src, re.S)
    assert proc, "raw_opt_proc() not found"
    for m in re.finditer(r'case FUSE_OPT_KEY_OPT:(.*?)return 1;', proc.group(0), re.S):
        ignored |= {p + "*" for p in re.findall(r'g_str_has_prefix \(arg, "([^"]+)"\)', m.group(1))}
    # A parse that found nothing would make the checks below pass vacuously.
    assert {"profile=", "source=", "include=", "exclude=", "token_file=", "allow_other"} <= options, options
    assert {"_netdev", "comment=", "x-*"} <= ignored, ignored
    return options, ignored


def man_source_sections():
    text = (SOURCE / "docs" / "onedrive-syncfs.1.scd").read_text()
    sections = {}
    for m in re.finditer(r"^# ([A-Z ]+)\n(.*?)(?=^# |\Z)", text, re.S | re.M):
        sections[m.group(1).strip()] = m.group(2)
    return sections


def documented_items(section):
    """The *bold* terms that open an item (a line at column 0), e.g. "*verbose*, *-v*"."""
    words = set()
    for line in section.splitlines():
        if line.startswith("*"):
            words |= {w.replace("\\", "") for w in re.findall(r"\*([^*\s]+)\*", line)}
    return words


def test_man_page_documents_every_option():
    options, ignored = option_table()
    sections = man_source_sections()
    items = documented_items(sections["OPTIONS"])
    missing = sorted(o for o in options if o not in items)
    assert not missing, f"options in src/fs/fs-options.c without an item in docs/onedrive-syncfs.1.scd: {missing}"
    # And the other way: an item under "Mount and sync options" / "Service options" names an
    # option the daemon has (-f, -d, --help, -V are libfuse's and listed before those).
    ours = documented_items(sections["OPTIONS"].split("## Mount and sync options", 1)[1])
    stale = sorted(w for w in ours if w not in options)
    assert not stale, f"documented options the daemon does not have: {stale}"
    fstab = sections["FSTAB"].replace("\\", "")
    for word in sorted(ignored):
        bold = "*" + word.rstrip("*") + "*"
        assert bold in fstab, f"the ignored word {word} is not named under FSTAB"
    env = sections["ENVIRONMENT"]
    daemon_src = (SOURCE / "src" / "main.c").read_text() + (SOURCE / "src" / "fs" / "fs-options.c").read_text()
    for var in sorted(set(re.findall(r'g_getenv \("([A-Z_]+)"\)', daemon_src))
                      | set(re.findall(r'xdg_dir \("([A-Z_]+)"', daemon_src))):
        assert f"*{var}*" in env, f"environment variable {var} is read but not under ENVIRONMENT"


def test_help_lists_every_option():
    if not BUILT_DAEMON.exists():
        pytest.skip(f"the daemon is not built ({BUILT_DAEMON})")
    options, _ = option_table()
    r = subprocess.run([str(BUILT_DAEMON), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    listed = (set(re.findall(r"^\s+-o ([a-z_]+)", r.stdout, re.M))
              | set(re.findall(r"(?<![\w-])(-[a-zA-Z])\b", r.stdout)))
    missing = sorted({o.rstrip("=") for o in options} - listed)
    assert not missing, f"options missing from --help: {missing}\n{r.stdout}"
