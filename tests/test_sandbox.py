"""Issue 20, item 4: an isolated plugin that attacks its host on purpose.

``evil`` is a real plugin.  A host process (a child of this test, so that an
attack that works hurts it and not the test) loads it isolated and has it try
every attack from the issue, then checks after each one that it is alive, its
secret is intact and the plugin still answers; it prints what each attack
returned.  The battery runs with the host as root and as ``nobody``, each in
the full sandbox (namespaces) and in the fallback (a seccomp filter on the
host takes ``unshare`` away, as a container profile or a sysctl would).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hotload import Host, Isolated
from hotload._artifact.builder import compile_plugin
from hotload._platform import _seccomp

from conftest import ROOT

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or _seccomp.arch() is None,
    reason="the sandbox is Linux's (x86-64, AArch64)",
)

EVIL = r"""
#define _GNU_SOURCE
#define HOTLOAD_ALLOW_STRING_EXPORT
#include <hotload.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

HOTLOAD_PLUGIN("evil", "1.0.0");

/* pid 0 means "my parent" (getppid()), any other the pid the test passed in */
static pid_t target(int32_t pid) { return pid ? (pid_t)pid : getppid(); }

HOTLOAD_API int64_t ping(int64_t x) { return x + 1; }
HOTLOAD_EXPORT(ping, int64_t, (int64_t));

HOTLOAD_API int32_t parent(void) { return (int32_t)getppid(); }
HOTLOAD_EXPORT(parent, int32_t, (void));

HOTLOAD_API int32_t whoami(void) { return (int32_t)getuid(); }
HOTLOAD_EXPORT(whoami, int32_t, (void));

/* /proc/<pid>/mem: bytes read into out (or written from data), or -errno */
HOTLOAD_API int64_t mem_read(int32_t pid, uint64_t addr, uint8_t *out, size_t n)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", (int)target(pid));
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -errno;
    ssize_t r = pread(fd, out, n, (off_t)addr);
    int e = errno;
    close(fd);
    return r < 0 ? -e : r;
}
HOTLOAD_EXPORT(mem_read, int64_t, (int32_t, uint64_t, uint8_t *, size_t));

HOTLOAD_API int64_t mem_write(int32_t pid, uint64_t addr, const uint8_t *data, size_t n)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", (int)target(pid));
    int fd = open(path, O_RDWR);
    if (fd < 0) return -errno;
    ssize_t r = pwrite(fd, data, n, (off_t)addr);
    int e = errno;
    close(fd);
    return r < 0 ? -e : r;
}
HOTLOAD_EXPORT(mem_write, int64_t, (int32_t, uint64_t, const uint8_t *, size_t));

HOTLOAD_API int64_t vm_read(int32_t pid, uint64_t addr, uint8_t *out, size_t n)
{
    struct iovec here = {out, n}, there = {(void *)(uintptr_t)addr, n};
    ssize_t r = process_vm_readv(target(pid), &here, 1, &there, 1, 0);
    return r < 0 ? -errno : r;
}
HOTLOAD_EXPORT(vm_read, int64_t, (int32_t, uint64_t, uint8_t *, size_t));

HOTLOAD_API int64_t vm_write(int32_t pid, uint64_t addr, const uint8_t *data, size_t n)
{
    struct iovec here = {(void *)data, n}, there = {(void *)(uintptr_t)addr, n};
    ssize_t r = process_vm_writev(target(pid), &here, 1, &there, 1, 0);
    return r < 0 ? -errno : r;
}
HOTLOAD_EXPORT(vm_write, int64_t, (int32_t, uint64_t, const uint8_t *, size_t));

/* PTRACE_ATTACH; on success, let go again at once (the test fails either way) */
HOTLOAD_API int32_t attach(int32_t pid)
{
    pid_t t = target(pid);
    if (ptrace(PTRACE_ATTACH, t, 0, 0) != 0) return -errno;
    waitpid(t, NULL, __WALL);
    ptrace(PTRACE_DETACH, t, 0, 0);
    return 0;
}
HOTLOAD_EXPORT(attach, int32_t, (int32_t));

/* kill(pid, sig): -1 is every process; 0 the parent */
HOTLOAD_API int32_t sig(int32_t pid, int32_t signo)
{
    return kill(pid == -1 ? -1 : target(pid), signo) == 0 ? 0 : -errno;
}
HOTLOAD_EXPORT(sig, int32_t, (int32_t, int32_t));

HOTLOAD_API int32_t unreap(void)
{
    return prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) == 0 ? 0 : -errno;
}
HOTLOAD_EXPORT(unreap, int32_t, (void));

static void linger(const char *name, int32_t secs)
{
    prctl(PR_SET_NAME, name, 0, 0, 0);
    struct timespec ts = {secs, 0};
    while (nanosleep(&ts, &ts) != 0) {}
    _exit(0);
}

/* setsid() + double fork: a daemon named `name`; returns what setsid() said */
HOTLOAD_API int32_t escape(const char *name, int32_t secs)
{
    int fds[2];
    if (pipe(fds)) return -1000;
    pid_t mid = fork();
    if (mid == 0) {
        int32_t s = setsid() < 0 ? -errno : 0;
        if (fork() == 0) linger(name, secs);
        (void)!write(fds[1], &s, sizeof s);
        _exit(0);
    }
    int32_t s = -1001;
    (void)!read(fds[0], &s, sizeof s);
    close(fds[0]);
    close(fds[1]);
    waitpid(mid, NULL, 0);
    return s;
}
HOTLOAD_EXPORT(escape, int32_t, (const char *, int32_t));

/* ask a host's control socket to reload a plugin from a file of ours; its answer */
HOTLOAD_API int64_t control(const char *path, uint8_t *out, size_t n)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    const char *req =
        "{\"op\": \"reload\", \"id\": 1, \"name\": \"evil\", \"path\": \"/tmp/x.so\"}\n";
    (void)!write(fd, req, strlen(req));
    size_t got = 0;
    ssize_t r;
    while (got < n && (r = read(fd, out + got, n - got)) > 0) got += (size_t)r;
    close(fd);
    return (int64_t)got;
}
HOTLOAD_EXPORT(control, int64_t, (const char *, uint8_t *, size_t));

/* a plain child named `name` */
HOTLOAD_API int32_t spawn(const char *name, int32_t secs)
{
    pid_t pid = fork();
    if (pid == 0) linger(name, secs);
    return pid > 0 ? 0 : -errno;
}
HOTLOAD_EXPORT(spawn, int32_t, (const char *, int32_t));

/* append a byte to `path`, creating it: 0, or -errno */
HOTLOAD_API int32_t scribble(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0666);
    if (fd < 0) return -errno;
    ssize_t n = write(fd, "x", 1);
    int err = n == 1 ? 0 : -errno;
    close(fd);
    return err;
}
HOTLOAD_EXPORT(scribble, int32_t, (const char *));
"""

# A process of the worker's uid, outside the sandbox: if a plugin's kill(-1, SIGWINCH)
# reached it, the next kill(-1) (a lethal signal) would reach every process of that uid.
CANARY = r"""
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static const char *mark;
static void hit(int s) { FILE *f = fopen(mark, "w"); if (f) { fprintf(f, "%d", s); fclose(f); } }
int main(int argc, char **argv)
{
    mark = argv[1];
    signal(SIGWINCH, hit);
    for (;;) pause();
}
"""

HOST = r"""
import ctypes, json, logging, os, signal, sys, time
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from hotload import Host, Isolated

plugin, tag, canary, mark, scenario = sys.argv[1:6]
out = {"host": os.getpid()}
secret = ctypes.create_string_buffer(b"hotload-secret-" + tag.encode())
want = secret.raw
addr, n = ctypes.addressof(secret), len(want)


def named(name):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as fh:
                    if fh.read().strip() == name:
                        found.append(int(entry))
            except OSError:
                pass
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


def appear(name, count, timeout=15.0):
    end = time.monotonic() + timeout
    while len(named(name)) < count and time.monotonic() < end:
        time.sleep(0.02)
    return len(named(name))


def gone(name, timeout=15.0):
    end = time.monotonic() + timeout
    while named(name):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


h = Host(os.environ["HOTLOAD_WORKDIR"])
p = h.load(plugin, isolate=Isolated(call_timeout=30.0, sandbox=scenario != "control"))
info = h.current("evil")
out.update(sandbox=list(info.sandbox), worker=info.pid, parent=p.parent(), uid=p.whoami())
print(json.dumps({"ready": out}), flush=True)

if scenario == "control":  # no sandbox: the issue's findings, reproduced
    buf = bytearray(n)
    out["mem_read"] = [p.mem_read(0, addr, buf, n), bytes(buf) == want]
    out["mem_write"] = p.mem_write(0, addr, b"PWNED!!", 7)
    out["secret_now"] = secret.raw[:7].decode(errors="replace")
    out["spawn"] = p.spawn("hlo-" + tag, 120)
    out["named"] = appear("hlo-" + tag, 1)
    out["write_victim"] = p.scribble(os.path.join(os.path.dirname(mark), "victim").encode())
    print(json.dumps({"control": out}), flush=True)
    p.sig(0, signal.SIGTERM)  # kill(getppid(), SIGTERM): this process
    time.sleep(30)
    sys.exit(4)

if scenario == "orphans":  # the test kills this host with SIGKILL now
    out["escape"] = p.escape("hlo-" + tag, 120)
    out["spawn"] = p.spawn("hlo-" + tag, 120)
    out["named"] = appear("hlo-" + tag, 2)
    print(json.dumps({"orphans": out}), flush=True)
    time.sleep(120)
    sys.exit(3)


def check(what):
    assert secret.raw == want, f"{what}: the host's secret changed: {secret.raw!r}"
    assert p.ping(41) == 42, what
    got = h.current("evil")
    assert got.restarts == 0 and got.pid == out["worker"], f"{what}: the worker was hurt"


attacks = out["attacks"] = {}
for who, label in ((0, "parent"), (os.getpid(), "host")):
    buf = bytearray(n)
    r = p.mem_read(who, addr, buf, n)
    attacks[f"mem_read {label}"] = [r, bytes(buf) == want]
    check(f"mem_read {label}")
    attacks[f"mem_write {label}"] = p.mem_write(who, addr, b"PWNED!!", 7)
    check(f"mem_write {label}")
    buf = bytearray(n)
    r = p.vm_read(who, addr, buf, n)
    attacks[f"vm_read {label}"] = [r, bytes(buf) == want]
    check(f"vm_read {label}")
    attacks[f"vm_write {label}"] = p.vm_write(who, addr, b"PWNED!!", 7)
    check(f"vm_write {label}")
    attacks[f"ptrace {label}"] = p.attach(who)
    check(f"ptrace {label}")
    for s in range(1, 32):
        attacks[f"kill {label} {signal.Signals(s).name}"] = p.sig(who, s)
        time.sleep(0.002)
        check(f"kill {label} {s}")

# files: the host's copy of this plugin, its build, the home directory's startup file, and
# a file of the worker's own uid that anyone may write (so only the sandbox can refuse it)
victim = os.path.join(os.path.dirname(mark), "victim")
for label, path in (
    ("copy", h.current("evil").copy),
    ("build", plugin),
    ("bashrc", os.path.join(os.environ["HOME"], ".bashrc")),
    ("victim", victim),
):
    attacks[f"write {label}"] = p.scribble(path.encode())
    check(f"write {label}")
out["victim_size"] = os.path.getsize(victim)

# kill(-1): a harmless signal first; a lethal one only if it reached nobody outside
attacks["kill -1 SIGWINCH"] = p.sig(-1, signal.SIGWINCH)
time.sleep(0.3)
out["canary_hit"] = os.path.exists(mark)
out["canary_alive"] = alive(canary)
if not out["canary_hit"] and out["canary_alive"]:
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGSTOP, signal.SIGKILL):
        attacks[f"kill -1 {s.name}"] = p.sig(-1, s)
        time.sleep(0.05)
        check(f"kill -1 {s.name}")
    out["canary_alive"] = alive(canary)

# leave the tree: drop the subreaper bit, setsid(), double fork
out["unreap"] = p.unreap()
out["setsid"] = p.escape("hld-" + tag, 120)
out["daemon_started"] = appear("hld-" + tag, 1)
check("escape")
h.reload("evil")
out["daemon_gone_after_reload"] = gone("hld-" + tag)
check2 = p.ping(1) == 2
out["serving_after_reload"] = check2
out["setsid_again"] = p.escape("hld-" + tag, 120)
h.close()
out["daemon_gone_after_close"] = gone("hld-" + tag)
out["secret_intact"] = secret.raw == want
print(json.dumps({"done": out}), flush=True)
"""


# ---- running a host as root or as nobody, with or without namespaces --------------------
NOBODY = 65534
CLONE_NEWNS, MS_REC, MS_PRIVATE, MS_BIND, MS_MOVE = 0x20000, 16384, 1 << 18, 4096, 8192


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A directory everyone may read (the unprivileged host must reach the
    plugin), holding the builds, owned by root (trusted)."""
    d = Path(tempfile.mkdtemp(prefix="hotload-sandbox-"))
    d.chmod(0o755)
    src = d / "evil.c"
    src.write_text(EVIL)
    compile_plugin(src, d / "evil.so")
    canary = d / "canary.c"
    canary.write_text(CANARY)
    subprocess.run(["cc", "-O1", "-o", str(d / "canary"), str(canary)], check=True, timeout=120)
    (d / "host.py").write_text(HOST)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _hidden_ancestor(path: str) -> str | None:
    """The first directory above ``path`` that other users cannot enter."""
    parts = Path(path).resolve().parts
    for i in range(2, len(parts)):
        anc = os.path.join(*parts[:i])
        if not os.stat(anc).st_mode & stat.S_IXOTH:
            return anc
    return None


def _preexec(uid: int | None, fallback: bool, stash: Path) -> Callable[[], None]:
    """Runs in the host's process before it execs: as ``uid`` (None: stay
    root) and, for the fallback, under a seccomp filter refusing new namespaces.
    The interpreter lives under /root here (mode 0700): for another uid, a
    private mount namespace puts a traversable tmpfs over /root holding only
    the interpreter's own directory."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    needed = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, str(ROOT))})
    cover: dict[str, list[tuple[str, bytes]]] = {}  # hidden ancestor -> (path, its stash)
    for i, path in enumerate(needed):
        anc = _hidden_ancestor(path) if uid is not None else None
        if anc is not None:
            slot = stash / str(i)
            slot.mkdir(exist_ok=True)
            cover.setdefault(anc, []).append((path, str(slot).encode()))
    # no namespaces: refused by unshare() and by clone() with a namespace flag alike, as
    # where user namespaces are off (user.max_user_namespaces=0, a container's profile)
    program = _seccomp.build(deny=("unshare",), strict=False, namespaces=True) if fallback else None

    def pre() -> None:
        if cover:
            if libc.unshare(CLONE_NEWNS) != 0:
                os._exit(97)
            libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
            for anc, subs in cover.items():
                for sub, slot in subs:
                    libc.mount(sub.encode(), slot, None, MS_BIND | MS_REC, None)
                libc.mount(b"tmpfs", anc.encode(), b"tmpfs", 0, b"mode=0755")
                for sub, slot in subs:
                    os.makedirs(sub, exist_ok=True)
                    libc.mount(slot, sub.encode(), None, MS_MOVE, None)
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        if program is not None:
            libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
            _seccomp.install(program)

    return pre


@contextlib.contextmanager
def running_host(
    shared: Path, tmp_path: Path, *, as_nobody: bool, fallback: bool, scenario: str = "battery"
) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """The host process, with a canary of the worker's uid beside it."""
    tag = f"{os.getpid() % 10000:04d}{int(time.monotonic() * 1000) % 1000:03d}"[-6:]
    work = Path(tempfile.mkdtemp(prefix="w-", dir=shared))
    stash = Path(tempfile.mkdtemp(prefix="s-", dir=tmp_path))
    if as_nobody:
        os.chown(work, NOBODY, NOBODY)
    work.chmod(0o700)
    marks = Path(tempfile.mkdtemp(prefix="m-", dir=shared))
    marks.chmod(0o777)
    mark = marks / "canary-hit"
    victim = marks / "victim"  # the worker's uid may write it: only the sandbox can refuse
    victim.touch(mode=0o666)
    victim.chmod(0o666)
    os.chown(victim, NOBODY, NOBODY)
    canary = subprocess.Popen(  # a process of the worker's uid: nobody, either way
        [str(shared / "canary"), str(mark)], user=NOBODY, group=NOBODY, extra_groups=[]
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "HOTLOAD_WORKDIR": str(work),
        "LANG": "C.UTF-8",
    }
    argv = [sys.executable, "-s", str(shared / "host.py"), str(shared / "evil.so"), tag]
    argv += [str(canary.pid), str(mark), scenario]
    host = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_preexec(NOBODY if as_nobody else None, fallback, stash),
    )
    try:
        yield host, {"tag": tag, "canary": str(canary.pid)}
    finally:
        for proc_ in (host, canary):
            if proc_.poll() is None:
                proc_.kill()
            proc_.wait(10)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(marks, ignore_errors=True)


def _read_line(host: subprocess.Popen[str], key: str, timeout: float = 120.0) -> dict[str, object]:
    """The host's next report line with ``key``; fails (with its stderr) if
    it dies or stays silent for ``timeout``."""
    lines = _lines.setdefault(host.pid, _reader(host))
    end = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            line = None
        if not line:
            break
        msg = json.loads(line)
        if key in msg:
            return msg[key]  # type: ignore[no-any-return]
    host.kill()
    host.wait(10)
    assert host.stderr is not None
    err = host.stderr.read()
    raise AssertionError(f"host ended or hung before {key!r} (rc {host.returncode}): {err[-3000:]}")


_lines: dict[int, queue.Queue[str | None]] = {}


def _reader(host: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """A thread that reads the host's stdout into a queue (None at its end)."""
    q: queue.Queue[str | None] = queue.Queue()

    def run() -> None:
        assert host.stdout is not None
        for line in host.stdout:
            q.put(line)
        q.put(None)

    threading.Thread(target=run, daemon=True).start()
    return q


MODES = [
    pytest.param(False, False, id="root-namespaces"),
    pytest.param(False, True, id="root-fallback"),
    pytest.param(True, False, id="nobody-namespaces"),
    pytest.param(True, True, id="nobody-fallback"),
]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run hosts as root and as nobody")
@pytest.mark.parametrize(("as_nobody", "fallback"), MODES)
def test_every_attack_on_the_host_fails(
    shared: Path, tmp_path: Path, as_nobody: bool, fallback: bool
) -> None:
    with running_host(shared, tmp_path, as_nobody=as_nobody, fallback=fallback) as (host, info):
        ready = _read_line(host, "ready")
        done = _read_line(host, "done")
        rc = host.wait(30)
        assert host.stderr is not None
        err = host.stderr.read()
    assert rc == 0, err[-3000:]
    protections = set(ready["sandbox"])  # type: ignore[call-overload]
    assert {"no-new-privs", "no-caps", "seccomp", "landlock"} <= protections
    assert ("uid-nobody" in protections) is not as_nobody  # a root host's worker is nobody
    assert done["uid"] == NOBODY
    if fallback:
        assert "pid-ns" not in protections and {"guard", "landlock-fs"} <= protections
        assert "weaker sandbox" in err and "Operation not permitted" in err, err[-2000:]
        assert done["parent"] not in (0, 1, done["host"])  # the guard: ours, not the host
    else:
        assert {"user-ns", "pid-ns", "mount-ns", "fs-view"} <= protections
        assert done["parent"] == 1  # its init: the host's pid does not exist in there
    attacks: dict[str, object] = done["attacks"]  # type: ignore[assignment]
    refused = {-errno.EPERM, -errno.EACCES, -errno.ESRCH, -errno.ENOENT, -errno.EROFS}
    for name, result in attacks.items():
        if name.startswith(("mem_read", "vm_read")):
            code, leaked = result  # type: ignore[misc]
            assert code in refused and not leaked, (name, result)
        elif name.startswith("kill -1"):
            continue  # kill(-1) answers 0 even when every target refused: judged by effect
        elif name.startswith("kill parent") and not fallback:
            # the sandbox's init (pid 1 in there) ignores what it has no handler for;
            # Landlock refuses outright where it scopes signals
            assert result in refused or "landlock-signal" not in protections, (name, result)
        else:
            assert result in refused, (name, result)
    assert not done["canary_hit"] and done["canary_alive"], "kill(-1) left the sandbox"
    assert {f"write {w}" for w in ("copy", "build", "bashrc", "victim")} <= set(attacks)
    assert done["victim_size"] == 0, "a file outside the sandbox was written"
    assert "kill -1 SIGKILL" in attacks  # the lethal ones were tried
    assert done["unreap"] == -errno.EPERM  # the worker stays its tree's subreaper
    assert done["setsid"] == (-errno.EPERM if fallback else 0)  # in a pid namespace: harmless
    assert done["daemon_started"] == 1
    assert done["daemon_gone_after_reload"] and done["serving_after_reload"]
    assert done["daemon_gone_after_close"] and done["secret_intact"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run hosts as root and as nobody")
@pytest.mark.parametrize(("as_nobody", "fallback"), MODES)
def test_forked_children_die_with_a_host_killed_by_sigkill(
    shared: Path, tmp_path: Path, as_nobody: bool, fallback: bool
) -> None:
    with running_host(
        shared, tmp_path, as_nobody=as_nobody, fallback=fallback, scenario="orphans"
    ) as (host, info):
        _read_line(host, "ready")
        orphans = _read_line(host, "orphans")
        assert orphans["named"] == 2, orphans  # a plain child and a setsid'd daemon
        os.kill(host.pid, signal.SIGKILL)
        host.wait(10)
        name = "hlo-" + info["tag"]
        end = time.monotonic() + 15
        while _named(name) and time.monotonic() < end:
            time.sleep(0.05)
        assert not _named(name), f"the plugin's children outlived its host: {_named(name)}"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a host as nobody")
def test_without_the_sandbox_the_issues_attacks_work(shared: Path, tmp_path: Path) -> None:
    """The control, as the issue found it (an ordinary user, no sandbox):
    the same plugin reads and overwrites the host's memory, kills it with a
    signal, and its child outlives it; so the refusals above are the
    sandbox's doing, not a broken plugin."""
    with running_host(shared, tmp_path, as_nobody=True, fallback=False, scenario="control") as (
        host,
        info,
    ):
        ready = _read_line(host, "ready")
        assert ready["sandbox"] == []
        got = _read_line(host, "control")
        assert host.wait(30) == -signal.SIGTERM  # kill(getppid(), SIGTERM) reached it
    name = "hlo-" + info["tag"]
    try:
        assert got["mem_read"] == [len("hotload-secret-") + 6 + 1, True], got
        assert got["mem_write"] == 7 and got["secret_now"] == "PWNED!!", got
        assert got["named"] == 1 and _named(name), "the child died with the host"
        assert got["write_victim"] == 0  # unsandboxed, the worker's uid may write it
    finally:
        for pid in _named(name):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _named(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm") as fh:
                if fh.read().strip() == name:
                    found.append(int(entry))
    return found


# ---- the same attacks without the sandbox: the plugin is real ---------------------------
@pytest.fixture
def evil(shared: Path) -> Path:
    return shared / "evil.so"


def test_without_the_sandbox_the_same_plugin_reads_the_host(
    tmp_path: Path, evil: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The control: with ``Isolated(sandbox=False)`` the plugin reads this
    process's memory through /proc/<ppid>/mem, so the refusals above are the
    sandbox's doing; the opt-out is logged and reported."""
    secret = ctypes.create_string_buffer(b"in plain sight")
    with caplog.at_level(logging.WARNING), Host(tmp_path / "w") as h:
        p = h.load(evil, isolate=Isolated(sandbox=False))
        buf = bytearray(len(secret.raw))
        assert p.mem_read(0, ctypes.addressof(secret), buf, len(buf)) == len(buf)
        assert bytes(buf) == secret.raw
        info = h.current("evil")
        assert info is not None and info.sandbox == () and info.pid is not None
        with open(f"/proc/{info.pid}/maps") as fh:
            assert str(h.workdir) in fh.read()  # it opens the copy itself
    assert "isolated without a sandbox (Isolated(sandbox=False))" in caplog.text


def test_the_sandbox_is_the_default_and_reported(tmp_path: Path, evil: Path) -> None:
    with Host(tmp_path / "w") as h:
        p = h.load(evil, isolate=True)
        info = h.current("evil")
        assert info is not None and info.isolated and info.pid is not None
        assert {"no-new-privs", "seccomp", "no-caps"} <= set(info.sandbox)
        if "pid-ns" in info.sandbox:  # its parent is its namespace's init, not this process
            assert p.parent() == 1
        with open(f"/proc/{info.pid}/status") as fh:  # the pid the host reports runs the plugin
            assert int(next(x for x in fh if x.startswith("Uid:")).split()[1]) == p.whoami()
        assert info.as_dict()["sandbox"] == list(info.sandbox)
        with pytest.raises(Exception, match="sandbox must be True or False"):
            Isolated(sandbox="yes")  # type: ignore[arg-type]


def test_hotload_ls_shows_the_sandbox(
    tmp_path: Path, short_tmp: Path, evil: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOTLOAD_CONTROL_DIR", str(short_tmp / "ctl"))
    with Host(tmp_path / "w", control=True) as h:
        h.load(evil, isolate=True)
        sock = str(next((short_tmp / "ctl").glob("host-*.sock")))

        def hotload(*args: str) -> str:
            return subprocess.run(
                [sys.executable, "-m", "hotload", *args, "--socket", sock],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout

        [version] = json.loads(hotload("ls", "--json"))["plugins"][0]["versions"]
        assert version["sandbox"] == list(h.current("evil").sandbox)  # type: ignore[union-attr]
        text = hotload("ls")
        assert f"[pid {version['pid']}, sandboxed]" in text
        assert "sandboxed: " + " ".join(version["sandbox"]) in text


@pytest.mark.parametrize("sandbox", [True, False], ids=["sandboxed", "no-sandbox"])
def test_a_plugin_cannot_drive_the_control_socket(
    tmp_path: Path,
    short_tmp: Path,
    evil: Path,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: bool,
) -> None:
    """Running as the host's uid, a plugin could ask the control socket to
    reload an in-process plugin from a file it wrote.  Sandboxed, the socket
    is not in its file system; unsandboxed, the server refuses any process
    inside a worker, whatever its uid."""
    monkeypatch.setenv("HOTLOAD_CONTROL_DIR", str(short_tmp / "ctl"))
    with Host(tmp_path / "w", control=True) as h:
        p = h.load(evil, isolate=Isolated(sandbox=sandbox))
        sock = str(next((short_tmp / "ctl").glob("host-*.sock")))
        buf = bytearray(4096)
        got = p.control(sock, buf, len(buf))
        if sandbox:
            assert got == -errno.ENOENT
        else:
            answer = json.loads(bytes(buf[:got]))
            assert answer["ok"] is False and answer["error"]["code"] == "forbidden"
            assert "inside a hotload worker process" in answer["error"]["message"]
        assert [v.seq for v in h.versions("evil")] == [1] and p.ping(1) == 2


HALFWAY = r"""
import json, os, sys
import hotload._platform._sandbox_linux as sb
from hotload._process import worker

worker._preload("isolated")


def broken(plan):  # as where /proc has masked paths (a container): mount proc is refused
    raise OSError(1, "mount proc on /newroot/proc: Operation not permitted (simulated)")


sb._build_root = broken
prot, why = sb.enter(int(sys.argv[1]))
print(json.dumps({"prot": prot, "why": why, "guard": os.getppid(), "pid": os.getpid(),
                  "below_guard": sb._descendants(os.getppid())}), flush=True)
"""


def test_a_sandbox_that_fails_halfway_falls_back_and_leaves_nothing(tmp_path: Path) -> None:
    """The user namespace came up but the worker's file system could not be
    built: the guard reaps what it forked and falls back, saying why."""
    script = tmp_path / "halfway.py"
    script.write_text(HALFWAY)
    code = (
        "import os, subprocess, sys; r = subprocess.run([sys.executable, '-s', sys.argv[1], "
        "str(os.getpid())], capture_output=True, text=True, timeout=60, "
        "start_new_session=True); print(r.stdout or r.stderr)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(script)], capture_output=True, text=True, timeout=90
    )
    got = json.loads(out.stdout)
    assert "simulated" in got["why"] and "guard" in got["prot"] and "pid-ns" not in got["prot"]
    assert got["below_guard"] == [got["pid"]]  # the namespace's processes are gone


# ---- the filter's own numbers -------------------------------------------------------------
def test_the_syscall_tables_match_libseccomp() -> None:
    """The filter is built here; its numbers are checked against libseccomp's
    tables for both architectures, where that library is installed."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError:
        pytest.skip("libseccomp is not installed")
    resolve = lib.seccomp_syscall_resolve_name_arch
    resolve.argtypes, resolve.restype = [ctypes.c_uint32, ctypes.c_char_p], ctypes.c_int
    for arch, table in _seccomp.TABLES.items():
        token = _seccomp._AUDIT_ARCH[arch]
        wrong = {n: (nr, resolve(token, n.encode())) for n, nr in table.items()}
        assert {n: v for n, v in wrong.items() if v[0] != v[1]} == {}, arch
