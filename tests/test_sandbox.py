"""The sandbox's limits, each proved by a model-written program, and the `code` verifier on top of it.

After every hostile program the caller goes on: the next verification still works."""

import os
import socket
import time

import pytest

from posttrain.grading.verifiers import code
from posttrain.grading.verifiers.sandbox import run_sandboxed

TESTS = {"tests": "assert add(2, 3) == 5"}


def _still_works():
    assert code.verify("```python\ndef add(a, b):\n    return a + b\n```", TESTS).score == 1.0


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may be slow to reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def test_passing_program_and_stdout_capture():
    r = run_sandboxed("import os\nprint('hello', 6 * 7)\nopen('scratch.txt', 'w').write('ok')\nprint(os.listdir('.'))")
    assert (r.returncode, r.timed_out, r.killed_reason) == (0, False, None)
    assert r.stdout.splitlines()[0] == "hello 42" and "scratch.txt" in r.stdout
    assert code.verify("def add(a, b):\n    return a + b", TESTS).score == 1.0  # unfenced code too


def test_failing_tests_give_the_assertion_as_reason():
    r = code.verify("```python\ndef add(a, b):\n    return a - b\n```", {"tests": "assert add(2, 3) == 5, 'add is wrong'"})
    assert (r.score, r.reason) == (0.0, "AssertionError: add is wrong")


def test_output_is_capped():
    r = run_sandboxed("print('x' * 1_000_000)", output_bytes=1000)
    assert r.stdout.startswith("x" * 1000) and "bytes dropped" in r.stdout and len(r.stdout) < 1100


@pytest.mark.parametrize("host", ["127.0.0.1", "8.8.8.8"])
def test_network_is_blocked(host):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1] if host == "127.0.0.1" else 53
    try:
        program = f"import socket\nsocket.create_connection(('{host}', {port}), timeout=2).sendall(b'hi')"
        r = code.verify(program, {"tests": "pass"})
    finally:
        listener.close()
    # the prelude's block (layer 2) answers first, whatever the kernel allows
    assert (r.score, r.reason) == (0.0, "PermissionError: network access is blocked in the sandbox")
    _still_works()


def test_network_namespace_stops_ctypes_too():
    # ctypes goes around the prelude's socket block; only the empty network namespace stops it
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    program = ("import ctypes, struct\nlibc = ctypes.CDLL(None, use_errno=True)\nfd = libc.socket(2, 1, 0)\n"
               f"addr = struct.pack('=H', 2) + struct.pack('!H', {port}) + bytes([127, 0, 0, 1]) + bytes(8)\n"
               "print(libc.connect(fd, addr, 16), ctypes.get_errno())")
    try:
        r = run_sandboxed(program)
    finally:
        listener.close()
    result, errno = map(int, r.stdout.split())
    if result == 0:
        pytest.skip("this kernel refused a network namespace: only the in-process socket block applies")
    assert errno in (101, 111)  # ENETUNREACH (no up interface) or ECONNREFUSED (nothing listens in the namespace)


def test_writes_outside_the_directory_are_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    for program in (f"open({str(target)!r}, 'w').write('pwned')",
                    f"import pathlib\npathlib.Path({str(target)!r}).write_text('pwned')",
                    f"import os\nos.chdir({str(tmp_path)!r})\nopen('escaped.txt', 'a').write('pwned')",
                    f"import os\nos.close(os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY))"):
        r = code.verify(program, {"tests": "pass"})
        assert r.score == 0.0 and "outside the sandbox directory" in r.reason, program
        assert not target.exists()
    _still_works()


def test_home_and_tmpdir_are_the_private_directory():
    r = run_sandboxed("import os, tempfile\nprint(os.environ['HOME'] == os.getcwd() == tempfile.gettempdir())")
    assert r.stdout.strip() == "True"


def test_a_huge_allocation_fails_quickly():
    start = time.monotonic()
    r = code.verify("data = bytearray(4 * 1024**3)", {"tests": "pass", "timeout_s": 5})
    assert r.score == 0.0 and "MemoryError" in r.reason
    assert time.monotonic() - start < 3
    _still_works()


def test_an_infinite_loop_and_its_children_are_killed_at_the_timeout():
    program = ("import os, subprocess\n"
               "sleeper = subprocess.Popen(['sleep', '100'])\n"
               "pid = os.fork()\n"
               "if pid == 0:\n"
               "    while True: pass\n"
               "print(os.getpid(), sleeper.pid, pid, flush=True)\n"
               "while True: pass\n")
    start = time.monotonic()
    r = run_sandboxed(program, timeout_s=1.5)
    elapsed = time.monotonic() - start
    assert r.timed_out and "timed out" in r.killed_reason and 1.4 < elapsed < 4
    leader, sleeper, forked = map(int, r.stdout.split())
    time.sleep(0.2)
    assert not any(_running(p) for p in (leader, sleeper, forked))
    assert _group_members(leader) == []
    result = code.verify("while True:\n    pass", {"tests": "pass", "timeout_s": 1})
    assert result.score == 0.0 and "timed out" in result.reason
    _still_works()


def test_background_children_do_not_outlive_a_program_that_exits():
    r = run_sandboxed("import subprocess\nprint(subprocess.Popen(['sleep', '100']).pid)")
    assert r.returncode == 0 and not r.timed_out
    time.sleep(0.2)
    assert not _running(int(r.stdout))
