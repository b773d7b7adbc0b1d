"""Run untrusted Python (a model's program) in an isolated, limited subprocess.

What each layer guarantees, and what it does not:

- Process: `sys.executable -I -S` (no user site, no site-packages, no PYTHON* variables, no current
  directory on sys.path), stdin closed, a minimal environment whose HOME and TMPDIR are a fresh
  temporary directory, which is also the working directory and is deleted afterwards.
- Resources (`resource` limits set before exec, inherited by every child): RLIMIT_AS (memory: a
  large allocation raises MemoryError), RLIMIT_CPU (CPU seconds: SIGXCPU), RLIMIT_FSIZE (no file
  larger than `file_mb`: SIGXFSZ), RLIMIT_CORE 0, RLIMIT_NPROC (the user's current process count
  plus `max_processes`; the kernel does not enforce it for root).
- Time: the program runs in its own session (process group). At `timeout_s` of wall time the whole
  group is killed with SIGKILL, and when the program ends the group is killed too, so nothing it
  spawned outlives it. A grandchild that calls setsid() leaves the group and escapes this.
- Network, two layers: (1) where the kernel permits (root, or unprivileged user namespaces), the
  child gets a new, empty network namespace (unshare CLONE_NEWNET): no interface but a down
  loopback, so no connection can be made, even by ctypes or a spawned `curl`; (2) always, a prelude
  replaces socket.socket, socketpair, create_connection, create_server, fromfd and the resolver
  functions (also in _socket) with ones raising PermissionError("network access is blocked ...").
  Layer 2 alone stops ordinary Python code; it does not stop ctypes or other programs.
- Files: the prelude refuses (PermissionError) Python-level writes outside the working directory:
  open/io.open in a write mode, os.open with write flags, and os remove/unlink/rename/replace/mkdir/
  rmdir/chmod/truncate/symlink/link. This is a guard against accidental and naive writes, with
  RLIMIT_FSIZE as a backstop on size; it does not stop ctypes, io.FileIO, or a spawned program
  (`sh -c 'echo > /x'`). Reading files is not restricted. A determined attacker needs an OS
  sandbox (a container, gVisor, nsjail, a separate user).
- Output: stdout and stderr are each kept up to `output_bytes` (the rest is read and dropped).

preexec_fn runs between fork and exec; Python documents it as unsafe with threads in the parent,
so call this from one thread or a process pool, not from many threads at once.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000


@dataclass(frozen=True)
class SandboxResult:
    returncode: int  # negative: killed by that signal
    stdout: str
    stderr: str
    timed_out: bool  # the wall-clock limit was reached and the process group killed
    killed_reason: str | None  # the limit that ended the program, in words; None when it exited by itself


_PRELUDE = r'''
import builtins, io, os, socket, _socket
def _install():
    def blocked(*args, **kwargs):
        raise PermissionError("network access is blocked in the sandbox")
    class BlockedSocket(socket.socket):  # a class, so that ssl and asyncio can still subclass it
        def __init__(self, *args, **kwargs):
            blocked()
    class BlockedRawSocket(_socket.socket):
        def __init__(self, *args, **kwargs):
            blocked()
    socket.socket = socket.SocketType = BlockedSocket
    _socket.socket = _socket.SocketType = BlockedRawSocket
    for module in (socket, _socket):
        for name in ("socketpair", "create_connection", "create_server", "fromfd", "getaddrinfo",
                     "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
            if hasattr(module, name):
                setattr(module, name, blocked)

    root = os.path.realpath(os.getcwd())
    def inside(path, dir_fd=None):
        if isinstance(path, int):
            return True  # an already-open descriptor
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        real = os.path.realpath(path)
        return real == root or real.startswith(root + os.sep)
    def refuse(path):
        raise PermissionError(f"writing outside the sandbox directory is blocked: {os.fsdecode(path)}")
    real_open, real_os_open = io.open, os.open
    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & writes and not inside(path, dir_fd):
            refuse(path)
        return real_os_open(path, flags, mode, dir_fd=dir_fd)
    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    def guard(name, checked):
        real = getattr(os, name)
        def wrapper(*args, **kwargs):
            for i in checked:
                if i < len(args) and not inside(args[i], kwargs.get("dir_fd", kwargs.get("src_dir_fd"))):
                    refuse(args[i])
            return real(*args, **kwargs)
        setattr(os, name, wrapper)
    for name in ("remove", "unlink", "rmdir", "mkdir", "chmod", "truncate"):
        guard(name, (0,))
    for name in ("rename", "replace", "link"):
        guard(name, (0, 1))
    guard("symlink", (1,))
    return real_open
_source = _install()("main.py", encoding="utf-8").read()
del _install
exec(compile(_source, "main.py", "exec"), {"__name__": "__main__", "__file__": "main.py", "__builtins__": builtins})
'''


def _user_process_count() -> int:
    """How many processes this user runs now: RLIMIT_NPROC counts them all, not only the sandbox's."""
    uid, n = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                n += entry.stat().st_uid == uid
            except OSError:
                pass
    return n


def _libc_unshare():
    if hasattr(os, "unshare"):  # Python 3.12+
        return os.unshare
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, in the parent: preexec must not load libraries

    def unshare(flags: int) -> None:
        if libc.unshare(flags) != 0:
            raise OSError(ctypes.get_errno(), "unshare failed")
    return unshare


def _limits(memory_mb: int, cpu_s: int, file_mb: int, nproc: int, unshare):
    def preexec() -> None:
        # Network namespace first: creating one needs privileges the limits below do not take away.
        for flags in (CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNET):
            try:
                unshare(flags)
                break
            except OSError:
                pass  # not permitted here: the prelude's socket block remains
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    return preexec


def _drain(stream, cap: int, into: list) -> None:
    """Read a pipe to its end, keeping the first `cap` bytes: the child never blocks on a full pipe."""
    kept, dropped = bytearray(), 0
    while chunk := stream.read(65536):
        room = cap - len(kept)
        kept += chunk[:room]
        dropped += max(0, len(chunk) - room)
    text = kept.decode("utf-8", errors="replace")
    into.append(text + (f"\n[... {dropped} more bytes dropped]" if dropped else ""))


def _alive(pid: int) -> bool:
    """Whether `pid` has exited, without reaping it (the group id stays reserved while it is a zombie)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


_SIGNALS = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "file size limit", signal.SIGKILL: "killed (SIGKILL)",
            signal.SIGSEGV: "segmentation fault"}


def run_sandboxed(code: str, *, timeout_s: float = 5, memory_mb: int = 512, cpu_s: int | None = None,
                  file_mb: int = 16, max_processes: int = 16, output_bytes: int = 65536) -> SandboxResult:
    """Run `code` as a Python program under the limits above; never raises for anything the program does."""
    cpu_s = cpu_s or int(timeout_s) + 1
    with tempfile.TemporaryDirectory(prefix="posttrain-sandbox-") as workdir:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(code)
        env = {"HOME": workdir, "TMPDIR": workdir, "PATH": os.defpath, "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _PRELUDE], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=_limits(memory_mb, cpu_s, file_mb, _user_process_count() + max_processes, _libc_unshare()),
        )
        out, err = [], []
        readers = [threading.Thread(target=_drain, args=(s, output_bytes, into), daemon=True)
                   for s, into in ((proc.stdout, out), (proc.stderr, err))]
        for r in readers:
            r.start()
        deadline = time.monotonic() + timeout_s
        while _alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        timed_out = _alive(proc.pid)
        # Kill the group before reaping the leader, so its id cannot have been reused by then; this also
        # ends any background children of a program that has already exited.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        returncode = proc.wait()
        for r in readers:
            r.join(timeout=2)  # a grandchild that left the group may hold a pipe open: do not wait for it
    if timed_out:
        reason = f"timed out after {timeout_s:g} s; process group killed"
    elif returncode < 0:
        reason = _SIGNALS.get(-returncode, f"killed by signal {-returncode}")
    else:
        reason = None
    return SandboxResult(returncode, out[0] if out else "", err[0] if err else "", timed_out, reason)
