"""The systemd units: required settings, `systemd-analyze verify`, and the seccomp sandbox.

The sandbox tests run the agent and the reporter on the bundled demo logs under seccomp
filters that mirror MemoryDenyWriteExecute= and SystemCallFilter= of the units, so that a
library needing writable and executable memory or a blocked system call fails here and not
on an operator's server. As in the units, a blocked call returns EPERM; pyarrow's allocator,
for one, calls mbind (in @resources) and goes on without it.
"""

from __future__ import annotations

import platform
import re
import shutil
import struct
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from .conftest import EXAMPLES, REPO

SYSTEMD = REPO / "systemd"
BIN = Path(sys.executable).parent
UNISTD_64 = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Return {section: [(key, value), …]} in file order; keys may repeat, as in systemd."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}:{number}: setting outside a section"
        assert "=" in line, f"{path.name}:{number}: expected KEY=VALUE, got {line!r}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [value for name, value in unit.get(section, []) if name == key]


AGENT_SERVICE = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecStart": "/usr/local/bin/clicktrail-agent run --config /etc/clicktrail/clicktrail.toml",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "WatchdogSec": "30s",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "78",
    "TimeoutStopSec": "30s",
    "User": "clicktrail",
    "StateDirectory": "clicktrail",
    "SupplementaryGroups": "adm",
    "ReadOnlyPaths": "/var/log",
    "UMask": "0027",
}

HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "PrivateDevices": "true",
    "NoNewPrivileges": "true",
    "ProtectKernelTunables": "true",
    "ProtectKernelModules": "true",
    "ProtectKernelLogs": "true",
    "ProtectControlGroups": "true",
    "ProtectClock": "true",
    "ProtectHostname": "true",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "true",
    "LockPersonality": "true",
    "MemoryDenyWriteExecute": "true",
    "RestrictRealtime": "true",
    "RestrictSUIDSGID": "true",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
}

REPORT_SERVICE = {
    "Type": "oneshot",
    "ExecStart": "/usr/local/bin/clicktrail-report nightly --config /etc/clicktrail/clicktrail.toml",
    "User": "clicktrail",
    "StateDirectory": "clicktrail clicktrail/reports",
    "UMask": "0027",
}

REPORT_TIMER = {
    "OnCalendar": "*-*-* 02:30:00",
    "Persistent": "true",
    "RandomizedDelaySec": "10min",
    "Unit": "clicktrail-report.service",
}


@pytest.mark.parametrize(
    ("file_name", "section", "expected"),
    [
        pytest.param("clicktrail-agent.service", "Service", AGENT_SERVICE, id="agent"),
        pytest.param("clicktrail-agent.service", "Service", HARDENING, id="agent-hardening"),
        pytest.param("clicktrail-report.service", "Service", REPORT_SERVICE, id="report"),
        pytest.param("clicktrail-report.service", "Service", HARDENING, id="report-hardening"),
        pytest.param("clicktrail-report.timer", "Timer", REPORT_TIMER, id="timer"),
    ],
)
def test_unit_has_required_settings(file_name: str, section: str, expected: dict[str, str]) -> None:
    unit = parse_unit(SYSTEMD / file_name)
    for key, value in expected.items():
        assert values(unit, section, key) == [value], f"{file_name}: [{section}] {key}"


@pytest.mark.parametrize("file_name", ["clicktrail-agent.service", "clicktrail-report.service"])
def test_unit_filters_system_calls(file_name: str) -> None:
    unit = parse_unit(SYSTEMD / file_name)
    assert values(unit, "Service", "SystemCallFilter") == ["@system-service",
                                                           "~@privileged @resources"]
    assert values(unit, "Service", "SystemCallErrorNumber") == ["EPERM"]


@pytest.mark.parametrize(
    ("file_name", "wanted_by"),
    [
        pytest.param("clicktrail-agent.service", "multi-user.target", id="agent"),
        pytest.param("clicktrail-report.timer", "timers.target", id="timer"),
    ],
)
def test_unit_install_target(file_name: str, wanted_by: str) -> None:
    unit = parse_unit(SYSTEMD / file_name)
    assert values(unit, "Install", "WantedBy") == [wanted_by]


def test_report_service_is_not_enabled_alone() -> None:
    # The timer starts the service; an [Install] section would also start it at every boot.
    assert "Install" not in parse_unit(SYSTEMD / "clicktrail-report.service")


def test_cron_example_runs_nightly_report() -> None:
    lines = [line for line in (SYSTEMD / "cron.example").read_text().splitlines()
             if line and not line.startswith("#") and "=" not in line.split()[0]]
    assert lines == ["30 2 * * * clicktrail /usr/local/bin/clicktrail-report nightly "
                     "--config /etc/clicktrail/clicktrail.toml"]


@pytest.fixture
def units_with_local_binaries(tmp_path: Path) -> list[Path]:
    """Copies of the units whose ExecStart= runs this virtualenv's console scripts.

    `systemd-analyze verify` rejects a unit whose ExecStart= binary does not exist, and the
    units name /usr/local/bin, where nothing is installed on a test machine.
    """
    copies = []
    for name in ("clicktrail-agent.service", "clicktrail-report.service",
                 "clicktrail-report.timer"):
        text = (SYSTEMD / name).read_text().replace("/usr/local/bin/", f"{BIN}/")
        copy = tmp_path / name
        copy.write_text(text)
        copies.append(copy)
    return copies


def test_systemd_analyze_verify(units_with_local_binaries: list[Path]) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    for script in ("clicktrail-agent", "clicktrail-report"):
        if not (BIN / script).exists():
            pytest.skip(f"{BIN / script} is missing; install the package into this virtualenv")

    result = subprocess.run([analyze, "verify", *map(str, units_with_local_binaries)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# systemd-analyze security scores a unit's exposure from 0 (locked down) to 10 (unprotected).
MAX_EXPOSURE = 2.0
EXPOSURE_LINE = re.compile(r"Overall exposure level for (\S+): ([0-9]+\.[0-9]+)")


@pytest.mark.parametrize("file_name", ["clicktrail-agent.service", "clicktrail-report.service"])
def test_security_exposure_at_most_2(file_name: str,
                                     units_with_local_binaries: list[Path]) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    unit = next(path for path in units_with_local_binaries if path.name == file_name)

    # --offline=true (systemd 250 or later) reads the unit file instead of a loaded unit.
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    match = EXPOSURE_LINE.search(result.stdout)
    assert match is not None, result.stdout
    assert match.group(1) == file_name
    assert float(match.group(2)) <= MAX_EXPOSURE, result.stdout


# Seccomp: classic BPF over struct seccomp_data (linux/seccomp.h, linux/filter.h).
BPF_LD_W_ABS, BPF_JEQ_K, BPF_AND_K, BPF_RET_K = 0x20, 0x15, 0x54, 0x06
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
EPERM, ENOSYS = 1, 38
AUDIT_ARCH_X86_64 = 0xC000003E
ARCH_OFFSET, NR_OFFSET, ARG2_OFFSET = 4, 0, 32
NR_MMAP, NR_MPROTECT, NR_SHMAT, NR_PKEY_MPROTECT = 9, 10, 30, 329
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0x8000


def bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def memory_deny_write_execute_filter() -> bytes:
    """The rules of systemd's MemoryDenyWriteExecute= (systemd.exec(5)), returning EPERM.

    mmap may not map memory both writable and executable, mprotect and pkey_mprotect may not
    make memory executable, and shmat may not attach shared memory executable.
    """
    deny, allow = SECCOMP_RET_ERRNO | EPERM, SECCOMP_RET_ALLOW
    return b"".join([
        bpf(BPF_LD_W_ABS, ARCH_OFFSET),
        bpf(BPF_JEQ_K, AUDIT_ARCH_X86_64, jt=1),
        bpf(BPF_RET_K, allow),
        bpf(BPF_LD_W_ABS, NR_OFFSET),
        bpf(BPF_JEQ_K, NR_MMAP, jt=4),
        bpf(BPF_JEQ_K, NR_MPROTECT, jt=6),
        bpf(BPF_JEQ_K, NR_PKEY_MPROTECT, jt=5),
        bpf(BPF_JEQ_K, NR_SHMAT, jt=7),
        bpf(BPF_RET_K, allow),
        # mmap: both PROT_WRITE and PROT_EXEC in the third argument
        bpf(BPF_LD_W_ABS, ARG2_OFFSET),
        bpf(BPF_AND_K, PROT_WRITE | PROT_EXEC),
        bpf(BPF_JEQ_K, PROT_WRITE | PROT_EXEC, jt=6, jf=7),
        # mprotect, pkey_mprotect: PROT_EXEC in the third argument
        bpf(BPF_LD_W_ABS, ARG2_OFFSET),
        bpf(BPF_AND_K, PROT_EXEC),
        bpf(BPF_JEQ_K, PROT_EXEC, jt=3, jf=4),
        # shmat: SHM_EXEC in the third argument
        bpf(BPF_LD_W_ABS, ARG2_OFFSET),
        bpf(BPF_AND_K, SHM_EXEC),
        bpf(BPF_JEQ_K, SHM_EXEC, jt=0, jf=1),
        bpf(BPF_RET_K, deny),
        bpf(BPF_RET_K, allow),
    ])


@cache
def syscall_numbers() -> dict[str, int]:
    text = UNISTD_64.read_text()
    return {name: int(number) for name, number in
            re.findall(r"^#define __NR_(\w+)\s+(\d+)$", text, flags=re.M)}


@cache
def expand_syscall_group(group: str) -> frozenset[str]:
    """Return the system calls of a systemd group such as @system-service, nested groups included."""
    output = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    names: set[str] = set()
    for line in output.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        names |= expand_syscall_group(item) if item.startswith("@") else {item}
    return frozenset(names)


def system_call_filter() -> bytes:
    """The units' SystemCallFilter=@system-service ~@privileged @resources, for x86-64 only.

    Allowed calls pass, and denied calls that systemd lists in @known return EPERM
    (SystemCallErrorNumber=). Calls missing from @known return ENOSYS, as systemd does for
    them, so that the C library falls back to an older call. Other ABIs than x86-64 are killed
    (SystemCallArchitectures=native).
    """
    numbers = syscall_numbers()
    allowed = (expand_syscall_group("@system-service") - expand_syscall_group("@privileged")
               - expand_syscall_group("@resources"))
    known = expand_syscall_group("@known")
    program = [
        bpf(BPF_LD_W_ABS, ARCH_OFFSET),
        bpf(BPF_JEQ_K, AUDIT_ARCH_X86_64, jt=1),
        bpf(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        bpf(BPF_LD_W_ABS, NR_OFFSET),
    ]
    # One compare and one return per call keeps every jump short (BPF jumps are 8 bits). The
    # frequent calls (read, write, mmap, futex) have low numbers, so they are checked first.
    for name in sorted(allowed & numbers.keys(), key=numbers.__getitem__):
        program += [bpf(BPF_JEQ_K, numbers[name], jf=1), bpf(BPF_RET_K, SECCOMP_RET_ALLOW)]
    for name in sorted((known - allowed) & numbers.keys()):
        program += [bpf(BPF_JEQ_K, numbers[name], jf=1), bpf(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM)]
    program.append(bpf(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS))
    return b"".join(program)


# Installs the filters given as hex arguments, checks that writable and executable memory is
# refused, then replaces itself with the command after "--".
SANDBOX = r"""
import ctypes, mmap, os, sys
separator = sys.argv.index("--")
libc = ctypes.CDLL(None, use_errno=True)
class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    sys.exit(f"PR_SET_NO_NEW_PRIVS failed: errno {ctypes.get_errno()}")
for hex_program in sys.argv[1:separator]:
    program = ctypes.create_string_buffer(bytes.fromhex(hex_program))
    fprog = SockFprog(len(program.raw) // 8, ctypes.addressof(program))
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        sys.exit(f"PR_SET_SECCOMP failed: errno {ctypes.get_errno()}")
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("the sandbox is not active: a writable and executable mapping was allowed")
except PermissionError:
    pass
command = sys.argv[separator + 1:]
os.execv(command[0], command)
"""


@pytest.fixture(scope="module")
def sandbox_filters() -> list[str]:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("the seccomp filters are written for Linux on x86-64")
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze (Debian package systemd) lists the system call groups")
    if not UNISTD_64.exists():
        pytest.skip(f"{UNISTD_64} (Debian package linux-libc-dev) maps system call names")
    return [memory_deny_write_execute_filter().hex(), system_call_filter().hex()]


def run_sandboxed(filters: list[str], command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SANDBOX, *filters, "--", *command], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def demo_config(tmp_path: Path) -> Path:
    text = (EXAMPLES / "clicktrail.toml").read_text()
    text = text.replace("../demo-output/", f"{tmp_path}/").replace('"logs/', f'"{EXAMPLES}/logs/')
    text = text.replace('"ranges/', f'"{EXAMPLES}/ranges/')
    config = tmp_path / "clicktrail.toml"
    config.write_text(text)
    return config


def test_sandbox_refuses_write_execute_memory(sandbox_filters: list[str], tmp_path: Path) -> None:
    code = ("import mmap\n"
            "m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE)\n"
            "import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "address = ctypes.c_void_p.from_buffer(m)\n"
            "print(libc.mprotect(ctypes.addressof(address), 4096, 5), ctypes.get_errno())\n")
    result = run_sandboxed(sandbox_filters, [sys.executable, "-c", code], tmp_path)
    # mprotect(PROT_READ | PROT_EXEC) fails with EPERM, as under MemoryDenyWriteExecute=true.
    assert result.stdout.strip() == "-1 1", result.stderr


def test_agent_runs_in_sandbox(sandbox_filters: list[str], demo_config: Path,
                               tmp_path: Path) -> None:
    result = run_sandboxed(sandbox_filters, [str(BIN / "clicktrail-agent"), "once", "--config",
                                             str(demo_config)], tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "10334 event(s)" in result.stdout
    assert list((tmp_path / "store" / "events").rglob("*.parquet"))


def test_file_watches_work_in_sandbox(sandbox_filters: list[str], tmp_path: Path) -> None:
    code = ("import os, sys, threading\n"
            "from watchdog.observers import Observer\n"
            "from watchdog.events import FileSystemEventHandler\n"
            "seen = threading.Event()\n"
            "class Handler(FileSystemEventHandler):\n"
            "    def on_any_event(self, event):\n"
            "        seen.set()\n"
            "observer = Observer()\n"
            "observer.schedule(Handler(), sys.argv[1])\n"
            "observer.start()\n"
            "with open(os.path.join(sys.argv[1], 'access.log'), 'a') as f:\n"
            "    f.write('line\\n')\n"
            "print(type(observer).__name__, seen.wait(10))\n"
            "observer.stop()\n"
            "observer.join(10)\n")
    result = run_sandboxed(sandbox_filters, [sys.executable, "-c", code, str(tmp_path)], tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["InotifyObserver", "True"]


@pytest.mark.slow
def test_reporter_runs_in_sandbox(sandbox_filters: list[str], demo_config: Path,
                                  tmp_path: Path) -> None:
    agent = run_sandboxed(sandbox_filters, [str(BIN / "clicktrail-agent"), "once", "--config",
                                            str(demo_config)], tmp_path)
    assert agent.returncode == 0, agent.stderr
    catalog = sorted(str(path) for path in (EXAMPLES / "catalog" / "deliveries").glob("*.json"))
    imported = run_sandboxed(sandbox_filters, [str(BIN / "clicktrail-report"), "import-catalog",
                                               "--config", str(demo_config), *catalog], tmp_path)
    assert imported.returncode == 0, imported.stderr

    nightly = run_sandboxed(sandbox_filters, [str(BIN / "clicktrail-report"), "nightly",
                                              "--config", str(demo_config),
                                              "--date", "2026-12-04"], tmp_path)

    assert nightly.returncode == 0, nightly.stderr
    assert "not permitted" not in nightly.stderr
    assert len(list((tmp_path / "reports" / "2026-12-04").glob("*.pdf"))) == 7
