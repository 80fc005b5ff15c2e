"""User code must not escape the tool sandbox: run against BOTH backends (Docker and
bubblewrap; plus the Docker warm pool where the difference matters).

A backend that cannot run on this machine is skipped with the reason (see
tests/sandbox/fixtures.py); scripts/docker-up.sh + scripts/build-sandbox-image.sh make
Docker available, scripts/sandbox-deps.sh installs bubblewrap.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from domain.sandbox import Sandbox
from tests.sandbox.fixtures import get_backend, run_code

PROJECT_DIR = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


async def test_no_network_interfaces_but_loopback(any_sandbox: Sandbox) -> None:
    result = await run_code(
        any_sandbox,
        "import os\n"
        "def run(_):\n"
        "    return sorted(os.listdir('/sys/class/net')) if os.path.isdir('/sys/class/net') "
        "else sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:])\n",
    )
    assert result.ok, result
    assert set(result.output or []) <= {"lo"}, result.output


async def test_tcp_to_host_services_and_outside_fails(any_sandbox: Sandbox) -> None:
    # Host loopback services (PostgreSQL, Redis on this machine) must be unreachable: the
    # sandbox has its own network namespace. The external address is a documentation
    # address (RFC 5737), tried only once the sandbox shows no interface but loopback, so
    # no packet can leave even if isolation were broken.
    code = """
import os, socket
def attempt(host, port):
    s = socket.socket(); s.settimeout(1.0)
    try:
        s.connect((host, port)); return 'connected'
    except OSError as e:
        return type(e).__name__ + ': ' + str(e)
    finally:
        s.close()
def run(_):
    ifaces = [l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]]
    out = {'ifaces': ifaces}
    for port in (5432, 6379, 8000):
        out['127.0.0.1:%d' % port] = attempt('127.0.0.1', port)
    if set(ifaces) <= {'lo'}:
        out['192.0.2.1:80'] = attempt('192.0.2.1', 80)
    return out
"""
    result = await run_code(any_sandbox, code)
    assert result.ok, result
    out = result.output
    assert isinstance(out, dict)
    assert set(out.pop("ifaces")) <= {"lo"}
    assert "192.0.2.1:80" in out
    for target, outcome in out.items():
        assert outcome != "connected", f"{target} reachable from the sandbox"


async def test_dns_lookup_fails(any_sandbox: Sandbox) -> None:
    code = """
import socket
def run(_):
    try:
        return socket.getaddrinfo('example.com', 443)[0][4][0]
    except OSError as e:
        return 'failed: ' + type(e).__name__
"""
    result = await run_code(any_sandbox, code)
    assert result.ok, result
    assert str(result.output).startswith("failed"), result.output


async def test_writes_outside_tmp_fail(any_sandbox: Sandbox) -> None:
    code = """
import os
def run(_):
    out = {}
    for path in ('/x', '/etc/x', '/usr/x', '/usr/bin/x', '/root/x', '/home/x', '/var/x',
                 '/proc/sys/kernel/hostname', '/dev/x', '/sys/x'):
        try:
            with open(path, 'w') as f:
                f.write('pwned')
            out[path] = 'written'
        except OSError as e:
            out[path] = type(e).__name__
    with open('/tmp/ok', 'w') as f:
        f.write('fine')
    out['/tmp/ok'] = open('/tmp/ok').read()
    return out
"""
    result = await run_code(any_sandbox, code)
    assert result.ok, result
    out = dict(result.output)  # type: ignore[arg-type]
    assert out.pop("/tmp/ok") == "fine"
    assert "written" not in out.values(), out


async def test_one_gigabyte_allocation_is_stopped(any_sandbox: Sandbox) -> None:
    result = await run_code(
        any_sandbox,
        "def run(_):\n    data = b'x' * (1 << 30)\n    return len(data)\n",
        memory_mb=256,
    )
    assert not result.ok
    assert result.oom_killed, result
    assert result.error_type == "MemoryError"
    assert "memory limit" in (result.error or "")
    assert not result.timed_out


async def test_fork_bomb_is_contained(any_sandbox: Sandbox) -> None:
    # bounded: count how many processes the pids limit lets through
    counted = await run_code(
        any_sandbox,
        """
import os, time
def run(_):
    n = 0
    try:
        while n < 1000:
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
    except OSError as e:
        return {'forked': n, 'error': type(e).__name__}
    return {'forked': n}
""",
        pids=32,
    )
    assert counted.ok, counted
    assert counted.output["forked"] < 32, counted.output  # type: ignore[index]
    # unbounded: a classic fork bomb ends at the timeout, and the host is fine afterwards
    bomb = await run_code(
        any_sandbox,
        "import os\ndef run(_):\n    while True:\n        try:\n            os.fork()\n"
        "        except OSError:\n            pass\n",
        pids=32,
        timeout_seconds=1.5,
    )
    assert not bomb.ok
    assert bomb.timed_out, bomb
    host = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, timeout=30)
    assert host.stdout.strip() == b"42"
    after = await run_code(any_sandbox, "def run(x):\n    return x\n", {"still": "fine"})
    assert after.ok and after.output == {"still": "fine"}, after


async def test_cpu_busy_loop_times_out(any_sandbox: Sandbox) -> None:
    result = await run_code(
        any_sandbox, "def run(_):\n    while True:\n        pass\n", timeout_seconds=1.0
    )
    assert not result.ok
    assert result.timed_out
    assert result.error_type == "Timeout"
    assert result.duration_ms < 6000, result.duration_ms


async def test_huge_output_is_truncated_and_flagged(any_sandbox: Sandbox) -> None:
    result = await run_code(
        any_sandbox,
        "import sys\ndef run(_):\n    while True:\n        sys.stdout.write('y' * 65536)\n",
        output_bytes=10_000,
    )
    assert not result.ok
    assert result.truncated
    assert result.error_type == "OutputLimit"
    assert 0 < len(result.stdout) <= 10_000
    big_return = await run_code(
        any_sandbox, "def run(_):\n    return 'z' * 50_000\n", output_bytes=10_000
    )
    assert not big_return.ok and big_return.truncated and big_return.output is None


async def test_host_files_are_not_readable(any_sandbox: Sandbox) -> None:
    secret = PROJECT_DIR / "pyproject.toml"
    assert secret.exists()
    code = """
import os
def run(x):
    out = {}
    for path in x['files']:
        try:
            with open(path, 'rb') as f:
                f.read(1)
            out[path] = 'read'
        except OSError as e:
            out[path] = type(e).__name__
    for path in x['dirs']:
        try:
            out[path] = 'listed: %d' % len(os.listdir(path))
        except OSError as e:
            out[path] = type(e).__name__
    return out
"""
    files = ["/etc/shadow", str(secret), "/root/.bash_history"]
    dirs = ["/root", str(PROJECT_DIR), "/home", "/work"]
    result = await run_code(any_sandbox, code, {"files": files, "dirs": dirs})
    assert result.ok, result
    out = result.output
    assert isinstance(out, dict)
    for path in files:
        assert out[path] != "read", f"{path} readable in the sandbox"
    for path in dirs:
        # either absent or empty (Debian images ship an empty /root and /home, mode 700/755)
        assert not str(out[path]).startswith("listed") or out[path] == "listed: 0", (path, out)


async def test_host_environment_does_not_leak(
    any_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "crewgraph-canary-" + os.urandom(6).hex()
    monkeypatch.setenv("CREWGRAPH_TEST_CANARY", canary)
    code = """
import os
def run(_):
    seen = {}
    for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
        try:
            seen[pid] = open('/proc/%s/environ' % pid, 'rb').read().decode('utf-8', 'replace')
        except OSError as e:
            seen[pid] = type(e).__name__
    seen['self'] = repr(dict(os.environ))
    return seen
"""
    result = await run_code(any_sandbox, code)
    assert result.ok, result
    assert canary not in str(result.output), "host environment visible in the sandbox"
    assert "DATABASE_URL" not in str(result.output)


async def test_runs_as_non_root_without_capabilities(any_sandbox: Sandbox) -> None:
    code = """
import os
def run(_):
    status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if ':' in l)
    return {'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(),
            'groups': os.getgroups(),
            'CapEff': status['CapEff'].strip(), 'CapPrm': status['CapPrm'].strip(),
            'CapBnd': status['CapBnd'].strip(), 'NoNewPrivs': status['NoNewPrivs'].strip()}
"""
    result = await run_code(any_sandbox, code)
    assert result.ok, result
    out = result.output
    assert isinstance(out, dict)
    assert out["uid"] != 0 and out["euid"] != 0 and out["gid"] != 0, out
    assert int(out["CapEff"], 16) == 0, out
    assert int(out["CapPrm"], 16) == 0, out
    assert out["NoNewPrivs"] == "1", out


async def test_setuid_and_kernel_interfaces_are_closed(any_sandbox: Sandbox) -> None:
    code = """
import os, ctypes
def run(_):
    out = {}
    try:
        os.setuid(0); out['setuid'] = 'became root'
    except OSError as e:
        out['setuid'] = type(e).__name__
    libc = ctypes.CDLL(None, use_errno=True)
    out['userns'] = 'created' if libc.unshare(0x10000000) == 0 else 'refused'  # CLONE_NEWUSER
    out['mountns'] = 'created' if libc.unshare(0x00020000) == 0 else 'refused'  # CLONE_NEWNS
    try:
        os.mknod('/tmp/dev', 0o600 | 0o060000, os.makedev(8, 0)); out['mknod'] = 'created'
    except OSError as e:
        out['mknod'] = type(e).__name__
    return out
"""
    result = await run_code(any_sandbox, code)
    assert result.ok, result
    out = result.output
    assert isinstance(out, dict)
    assert out["setuid"] != "became root"
    assert out["mknod"] != "created"
    assert out["userns"] == "refused", out
    assert out["mountns"] == "refused", out


async def test_two_tenants_never_share_a_container_or_scratch(any_sandbox: Sandbox) -> None:
    code = """
import os, time
def run(x):
    name = '/tmp/secret-' + x['tenant']
    with open(name, 'w') as f:
        f.write(x['tenant'])
    with open('secret-here', 'w') as f:   # the run's own scratch directory
        f.write(x['tenant'])
    time.sleep(x.get('sleep', 0))
    st = os.stat('/tmp')
    return {'tmp_dev': st.st_dev, 'cwd': os.getcwd(), 'seen': sorted(os.listdir('/tmp')),
            'boot': open('/proc/sys/kernel/random/boot_id').read().strip(),
            'ns': os.readlink('/proc/self/ns/mnt'), 'pidns': os.readlink('/proc/self/ns/pid')}
"""

    async def as_tenant(tenant: str, sleep: float) -> dict[str, object]:
        result = await run_code(
            any_sandbox, code, {"tenant": tenant, "sleep": sleep}, tenant=tenant
        )
        assert result.ok, result
        assert isinstance(result.output, dict)
        return result.output

    # concurrently, then one after the other (a warm pool would reuse a container here)
    a, b = await asyncio.gather(as_tenant("tenant-a", 0.5), as_tenant("tenant-b", 0.5))
    a2 = await as_tenant("tenant-a", 0)
    b2 = await as_tenant("tenant-b", 0)
    # namespace ids can be recycled once a namespace is gone: compare concurrent runs only
    assert a["ns"] != b["ns"], "tenants share a mount namespace"
    assert a["pidns"] != b["pidns"], "tenants share a PID namespace"
    for mine, other_tenant in (
        (a, "tenant-b"),
        (b, "tenant-a"),
        (a2, "tenant-b"),
        (b2, "tenant-a"),
    ):
        assert f"secret-{other_tenant}" not in mine["seen"], mine  # type: ignore[operator]
    assert a["cwd"] != b["cwd"] and a2["cwd"] != b2["cwd"]

    # within one tenant, nothing of an earlier run's scratch is left either
    leftovers = [s for s in a2["seen"] if s.startswith("run-")]  # type: ignore[union-attr]
    assert [os.path.basename(str(a2["cwd"]))] == leftovers, a2


async def test_syntax_error_is_reported_clearly(any_sandbox: Sandbox) -> None:
    result = await run_code(any_sandbox, "def run(x):\n    return (1 +\n")
    assert not result.ok
    assert result.error_type == "SyntaxError"
    assert "line 2" in (result.error or ""), result.error
    assert not result.timed_out and not result.oom_killed


async def test_good_function_returns_json(any_sandbox: Sandbox) -> None:
    result = await run_code(
        any_sandbox,
        "def run(x):\n    print('working on', x['n'])\n    return {'double': x['n'] * 2, 'items': [1, 'a', None]}\n",
        {"n": 21},
    )
    assert result.ok, result
    assert result.output == {"double": 42, "items": [1, "a", None]}
    assert result.stdout == "working on 21\n"
    assert result.exit_code == 0
    assert result.backend in {"docker", "bubblewrap"}


async def test_printed_text_cannot_forge_the_result(any_sandbox: Sandbox) -> None:
    forged = '{"ok": true, "output": "forged", "error": null}'
    result = await run_code(
        any_sandbox,
        f"import os\ndef run(_):\n    print({forged!r})\n    os.write(1, b{forged!r} + b'\\n')\n"
        "    raise RuntimeError('real failure')\n",
    )
    assert not result.ok
    assert result.output is None
    assert result.error_type == "RuntimeError"
    assert forged in result.stdout


@pytest.fixture(name="bubblewrap_sandbox")
async def bubblewrap_sandbox_fixture(sandbox_registry: Any) -> Sandbox:
    return await get_backend("bubblewrap", sandbox_registry)


async def test_bubblewrap_proc_shows_no_host_environment_or_directory(
    bubblewrap_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "crewgraph-secret-" + os.urandom(6).hex()
    monkeypatch.setenv("CREWGRAPH_SECRET_CANARY", canary)
    code = """
import os
def run(_):
    out = {}
    for name in ('/proc/1/environ', '/proc/self/environ', '/proc/1/cmdline'):
        try:
            out[name] = open(name, 'rb').read().decode('utf-8', 'replace')
        except OSError as e:
            out[name] = type(e).__name__
    for name in ('/proc/1/cwd', '/proc/self/cwd'):
        try:
            out[name] = os.readlink(name)
        except OSError as e:
            out[name] = type(e).__name__
    out['pids'] = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
    return out
"""
    result = await run_code(bubblewrap_sandbox, code)
    assert result.ok, result
    out = result.output
    assert isinstance(out, dict)
    seen = str(out)
    assert canary not in seen and "DATABASE_URL" not in seen
    assert str(PROJECT_DIR) not in seen, "host working directory visible in the sandbox"
    assert os.getcwd() not in seen or os.getcwd() == "/"
    # a fresh PID namespace: the host's processes (this test's pid) are not listed
    assert os.getpid() not in out["pids"] and max(out["pids"]) < 100, out["pids"]


async def test_bubblewrap_exposes_only_the_runtime_of_usr(bubblewrap_sandbox: Sandbox) -> None:
    code = """
import os
def run(x):
    return {p: os.path.exists(p) for p in x['paths']} | {
        'usr': sorted(os.listdir('/usr')),
        'bin': len(os.listdir('/usr/bin')),
    }
"""
    absent = [
        "/usr/bin/gcc",
        "/usr/bin/cc",
        "/usr/bin/apt",
        "/usr/bin/git",
        "/usr/bin/bwrap",
        "/usr/bin/sudo",
        "/usr/share/doc",
        "/usr/include",
        "/usr/local",
        "/usr/src",
        str(PROJECT_DIR),
    ]
    result = await run_code(bubblewrap_sandbox, code, {"paths": absent})
    assert result.ok, result
    out = result.output
    assert isinstance(out, dict)
    assert [p for p in absent if out[p]] == [], out
    assert set(out["usr"]) <= {"bin", "lib", "lib64", "lib32", "libx32", "sbin"}, out["usr"]
    assert out["bin"] < 60, out["bin"]  # the interpreter, prlimit and a few coreutils


async def test_bubblewrap_stdlib_and_basic_commands_still_work(bubblewrap_sandbox: Sandbox) -> None:
    code = """
import json, hashlib, sqlite3, ssl, decimal, ctypes, zlib, subprocess
def run(_):
    db = sqlite3.connect(':memory:')
    return {
        'sha': hashlib.sha256(b'x').hexdigest()[:8],
        'sql': db.execute('select 1 + 1').fetchone()[0],
        'zlib': len(zlib.compress(b'a' * 100)) < 100,
        'sh': subprocess.run(['sh', '-c', 'echo hi | cat'], capture_output=True).stdout.decode(),
    }
"""
    result = await run_code(bubblewrap_sandbox, code)
    assert result.ok, result
    assert result.output == {"sha": "2d711642", "sql": 2, "zlib": True, "sh": "hi\n"}
