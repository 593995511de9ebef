"""A classic-BPF seccomp filter for the agent, handed to ``bwrap --seccomp FD``.

Why our own generator and not libseccomp: the filter is ~40 instructions, the rules are fixed,
and writing them out keeps Airlock free of a C library binding that must match the runner's
libseccomp version. Tests load the filter into a real bwrap and try each refused call.

Layout: check the architecture first (a mismatch kills the process: an i386 ``int 0x80`` or an
x32 call must not slip past numbers meant for x86_64), then the syscall number:

- refused with EPERM: ptrace, process_vm_readv/writev, keyctl, add_key, request_key, unshare,
  setns, mount (old and new API), umount2, pivot_root, perf_event_open, bpf, userfaultfd;
- ``ioctl``: EPERM for TIOCSTI (type into the terminal) and TIOCLINUX, else allowed;
- ``clone``: EPERM when the flags ask for a new namespace, else allowed;
- ``clone3``: ENOSYS, so libc falls back to ``clone``, whose flags a filter can read (clone3
  passes them in memory, which seccomp cannot see).
"""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass

__all__ = ["ARCHES", "SeccompArch", "build_filter", "host_arch"]

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

_RET_KILL_PROCESS = 0x80000000
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0_LO = 16  # seccomp_data.args[0], low 32 bits (little-endian)
_OFF_ARG1_LO = 24

_X32_BIT = 0x40000000
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (NEWTIME is clone3-only)
CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
CLONE_NS_FLAGS |= 0x40000000

_REFUSED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "keyctl",
    "add_key",
    "request_key",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "perf_event_open",
    "bpf",
    "userfaultfd",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
)


@dataclass(frozen=True)
class SeccompArch:
    name: str
    audit_arch: int
    numbers: dict[str, int]
    x32_bit: bool = False  # x86_64: refuse the x32 ABI (numbers with bit 30 set)


_GENERIC_NEW = {
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "mount_setattr": 442,
}

ARCHES = {
    "x86_64": SeccompArch(
        "x86_64",
        0xC000003E,
        {
            "ioctl": 16,
            "clone": 56,
            "ptrace": 101,
            "pivot_root": 155,
            "mount": 165,
            "umount2": 166,
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "unshare": 272,
            "perf_event_open": 298,
            "setns": 308,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "bpf": 321,
            "userfaultfd": 323,
            **_GENERIC_NEW,
        },
        x32_bit=True,
    ),
    "aarch64": SeccompArch(
        "aarch64",
        0xC00000B7,
        {
            "ioctl": 29,
            "umount2": 39,
            "mount": 40,
            "pivot_root": 41,
            "unshare": 97,
            "ptrace": 117,
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "clone": 220,
            "perf_event_open": 241,
            "setns": 268,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "bpf": 280,
            "userfaultfd": 282,
            **_GENERIC_NEW,
        },
    ),
}


def host_arch() -> SeccompArch | None:
    """The filter's description for this machine, or None when we have none (no filter)."""
    machine = platform.machine().lower()
    return ARCHES.get({"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine))


def build_filter(arch: SeccompArch) -> bytes:
    """The filter as ``struct sock_filter[]`` bytes, the format ``bwrap --seccomp`` reads."""
    prog = _Program()
    nums = arch.numbers
    prog.load(_OFF_ARCH)
    prog.jump_unless(arch.audit_arch, "kill")
    prog.load(_OFF_NR)
    if arch.x32_bit:
        prog.jump_if_ge(_X32_BIT, "eperm")
    for name in _REFUSED:
        prog.jump_if(nums[name], "eperm")
    prog.jump_if(nums["clone3"], "enosys")
    prog.jump_if(nums["clone"], "clone")
    prog.jump_unless(nums["ioctl"], "allow")
    prog.load(_OFF_ARG1_LO)
    prog.jump_if(TIOCSTI, "eperm")
    prog.jump_if(TIOCLINUX, "eperm")
    prog.ret(_RET_ALLOW)
    prog.label("clone")
    prog.load(_OFF_ARG0_LO)
    prog.jump_if_set(CLONE_NS_FLAGS, "eperm")
    prog.label("allow")
    prog.ret(_RET_ALLOW)
    prog.label("eperm")
    prog.ret(_RET_ERRNO | errno.EPERM)
    prog.label("enosys")
    prog.ret(_RET_ERRNO | errno.ENOSYS)
    prog.label("kill")
    prog.ret(_RET_KILL_PROCESS)
    return prog.assemble()


class _Program:
    """Instructions with forward jumps to labels, resolved at assembly (BPF jumps go forward)."""

    def __init__(self) -> None:
        self._ins: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}

    def load(self, offset: int) -> None:
        self._ins.append((_LD_W_ABS, None, None, offset))

    def jump_if(self, value: int, target: str) -> None:
        self._ins.append((_JEQ_K, target, None, value))

    def jump_unless(self, value: int, target: str) -> None:
        self._ins.append((_JEQ_K, None, target, value))

    def jump_if_ge(self, value: int, target: str) -> None:
        self._ins.append((_JGE_K, target, None, value))

    def jump_if_set(self, mask: int, target: str) -> None:
        self._ins.append((_JSET_K, target, None, mask))

    def ret(self, value: int) -> None:
        self._ins.append((_RET_K, None, None, value))

    def label(self, name: str) -> None:
        self._labels[name] = len(self._ins)

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (code, jt, jf, k) in enumerate(self._ins):
            out += struct.pack("=HBBI", code, self._offset(index, jt), self._offset(index, jf), k)
        return bytes(out)

    def _offset(self, index: int, label: str | None) -> int:
        if label is None:
            return 0
        delta = self._labels[label] - index - 1
        if not 0 <= delta <= 255:
            raise ValueError(f"seccomp jump to {label} out of range ({delta})")
        return delta
