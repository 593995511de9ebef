"""The compiled I/O loop's own lifetime (gateway/postgres/_loop.c), under AddressSanitizer.

A gateway torn down without ``close_io`` (a close that timed out) can drop the last reference to
its Loop inside one of the loop's callbacks: the dealloc then runs on the loop's own thread,
which cannot join itself. It freed the Loop and went back to ``epoll_wait`` on freed memory.
Found by review (creview); built with ASan here and run in a child process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_OWN_CALLBACK = """
import importlib.util, socket, sys, threading, time
spec = importlib.util.spec_from_file_location("_loop", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
holder = [m.Loop()]
done = threading.Event()
c, c_end = socket.socketpair()
u, u_end = socket.socketpair()

def on_data(side, data):
    holder.clear()  # the last reference: the dealloc runs now, on the loop's own thread
    done.set()

handle = holder[0].add(c_end.fileno(), u_end.fileno(), on_data, lambda s, r: None)
holder[0].pause(handle, 0, False)
c.sendall(b"x")
assert done.wait(10)
time.sleep(0.5)  # the loop thread goes on after the callback: a freed Loop is used here
print("survived")
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler")
def test_the_loop_dropped_from_its_own_callback_is_not_used_after_free(tmp_path: Path) -> None:
    import airlock
    from airlock.cbuild import compile_module

    source = Path(airlock.__file__).parent / "gateway" / "postgres" / "_loop.c"
    asan = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert os.path.isabs(asan), "gcc's AddressSanitizer runtime (libasan) is missing"
    built = compile_module(source, "_loop", tmp_path, "gcc -g -fsanitize=address", ())
    env = {**os.environ, "LD_PRELOAD": asan, "ASAN_OPTIONS": "detect_leaks=0:use_sigaltstack=0"}
    env["PYTHONMALLOC"] = "malloc"
    run = subprocess.run(
        [sys.executable, "-c", _OWN_CALLBACK, str(built)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert "AddressSanitizer" not in run.stderr, run.stderr[:1500]
    assert run.returncode == 0 and "survived" in run.stdout, run.stderr[:1500]
