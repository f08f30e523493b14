"""The Docker sandbox against real containers: exec round trip, limits, security, recycling."""

from __future__ import annotations

import textwrap

import docker
import pytest

from ptgym.sandbox import SandboxConfig, SandboxError, SandboxPool, SandboxUserError
from ptgym.sandbox.image import apt_mirror, dockerfile
from tests.sandbox_fixtures import (  # noqa: F401 (fixtures)
    TEST_CONFIG,
    fixture_sandbox_image,
    fixture_sandbox_pool,
)

pytestmark = pytest.mark.docker

ENOENT, EAGAIN, EACCES, ENETUNREACH, EROFS = 2, 11, 13, 101, 30


def py(sb, code: str, **kw):
    return sb.run_python(textwrap.dedent(code), **kw)


def test_exec_round_trip(sandbox_pool):
    with sandbox_pool.lease() as sb:
        r = sb.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (r.exit_code, r.stdout, r.stderr, r.timed_out, r.oom) == (
            3,
            "out\n",
            "err\n",
            False,
            False,
        )
        r = py(sb, "import os, sys; print(os.getcwd(), os.getuid(), sys.argv)")
        assert (r.exit_code, r.stdout) == (0, "/work 1000 ['-']\n")
        assert sb.write_file("pkg/data.bin", b"\x00\xff") == 2
        assert sb.read_file("pkg/data.bin") == b"\x00\xff"
        assert sb.exec(["cat", "pkg/data.bin"]).stdout == "\x00\ufffd"  # decoded with replace


def test_missing_program_is_exit_127(sandbox_pool):
    with sandbox_pool.lease() as sb:
        r = sb.exec(["no-such-program"])
        assert r.exit_code == 127
        assert "No such file" in r.stderr


def test_infinite_loop_is_killed_at_timeout_with_its_whole_group(sandbox_pool):
    with sandbox_pool.lease() as sb:
        r = py(
            sb,
            """
            import subprocess
            subprocess.Popen(["sleep", "1000"])                          # same process group
            subprocess.Popen(["sleep", "1000"], start_new_session=True)  # escaped the group
            while True:
                pass
        """,
            timeout=1.0,
        )
        assert r.timed_out and r.exit_code == -9
        assert r.duration_s >= 1.0  # killed at the timeout, not before
        # Nothing survives: only the exec server (PID 1), the fork server and this new process
        # (forked from it) exist.
        r = py(
            sb,
            "import os; pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
            "print(pids == [1, os.getppid(), os.getpid()])",
        )
        assert r.stdout == "True\n"
        assert py(sb, "print('still usable')").stdout == "still usable\n"


def test_all_output_is_kept_when_one_stream_closes_early_or_a_child_holds_the_pipes(sandbox_pool):
    with sandbox_pool.lease() as sb:
        r = py(
            sb,
            """
            import os, subprocess, sys
            os.close(1)                                      # stdout reaches EOF first
            subprocess.Popen(["sleep", "1000"], stderr=2)   # holds stderr open after we exit
            sys.stderr.write("e" * 3000)
        """,
        )
        # Not timed out: the sleeper was killed when the main process exited.
        assert (r.exit_code, r.stdout, r.stderr, r.timed_out) == (0, "", "e" * 3000, False)


def test_fork_bomb_is_contained_by_the_pids_limit(sandbox_pool):
    with sandbox_pool.lease() as sb:
        r = py(
            sb,
            """
            import os, time
            n = 0
            try:
                while True:
                    if os.fork() == 0:
                        time.sleep(60)
                        os._exit(0)
                    n += 1
            except OSError as e:
                print(n, e.errno)
        """,
        )
        forked, errno = map(int, r.stdout.split())
        # The server, the fork server, this python and its children share the limit of 64 pids.
        assert errno == EAGAIN and forked == TEST_CONFIG.pids - 3
        r = py(
            sb,
            """
            import os
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
        """,
            timeout=2.0,
        )
        assert r.timed_out
        assert sb.ping()
        assert sb.exec(["echo", "ok"]).stdout == "ok\n"


def test_memory_bomb_is_reported_as_out_of_memory(sandbox_pool):
    with sandbox_pool.lease() as sb:
        r = py(
            sb,
            """
            chunks = []
            while True:
                chunks.append(b"x" * (16 << 20))
        """,
            timeout=30.0,
        )
        assert (r.oom, r.exit_code, r.timed_out) == (True, -9, False)
        assert sb.ping()  # the OOM killer took the bomb, not the server
        attrs = sb.container.attrs["HostConfig"]
        assert attrs["Memory"] == attrs["MemorySwap"] == 256 << 20


def test_network_egress_fails(sandbox_pool):
    with sandbox_pool.lease() as sb:
        r = py(
            sb,
            """
            import os, socket
            print(sorted(os.listdir("/sys/class/net")))
            for target in [("1.1.1.1", 53), ("8.8.8.8", 443)]:
                try:
                    socket.create_connection(target, timeout=2)
                except OSError as e:
                    print(e.errno)
            try:
                socket.getaddrinfo("deb.debian.org", 80)
            except OSError as e:
                print("dns failed")
        """,
        )
        assert r.stdout == f"['lo']\n{ENETUNREACH}\n{ENETUNREACH}\ndns failed\n"


def test_writing_outside_the_work_directory_fails(sandbox_pool):
    with sandbox_pool.lease() as sb:
        for path in ["../etc/evil", "/etc/evil", "a/../../evil", "/tmp/evil"]:
            with pytest.raises(SandboxUserError, match="outside /work"):
                sb.write_file(path, "x")
        sb.exec(["ln", "-s", "/etc", "escape"])
        with pytest.raises(SandboxUserError, match="outside /work"):
            sb.write_file("escape/evil", "x")
        with pytest.raises(SandboxUserError, match="outside /work"):
            sb.read_file("escape/passwd")
        r = py(
            sb,
            """
            import os
            for path in ["/evil", "/etc/evil", "/tmp/evil", "/dev/evil"]:
                try:
                    open(path, "w")
                except OSError as e:
                    print(e.errno, end=" ")
            writable = []
            for root, dirs, _ in os.walk("/"):
                if root.startswith(("/proc", "/sys")):
                    dirs[:] = []
                    continue
                try:
                    open(os.path.join(root, ".probe"), "w").close()
                    writable.append(root)
                except OSError:
                    pass
            print(sorted(writable))
        """,
        )
        # Read-only root, /dev root-owned; besides /work only the private IPC namespace's
        # /dev/shm and /dev/mqueue, size-capped and emptied between episodes (see
        # tests/test_sandbox_integrity.py).
        assert (
            r.stdout == f"{EROFS} {EROFS} {EROFS} {EACCES} ['/dev/mqueue', '/dev/shm', '/work']\n"
        )


def test_code_runs_unprivileged(sandbox_pool):
    with sandbox_pool.lease() as sb:
        r = py(
            sb,
            """
            import os
            fields = dict(l.split(":", 1) for l in open("/proc/self/status"))
            print(os.getuid(), os.getgid(), fields["CapEff"].strip(), fields["NoNewPrivs"].strip())
        """,
        )
        assert r.stdout == "1000 1000 0000000000000000 1\n"
        # Signals to PID 1 without a handler are dropped by the kernel: code cannot kill the server.
        py(sb, "import os, signal; os.kill(1, signal.SIGKILL); os.kill(1, signal.SIGTERM)")
        assert sb.ping()


def test_huge_and_binary_output_is_truncated_cleanly(sandbox_pool):
    cap = TEST_CONFIG.max_output
    with sandbox_pool.lease() as sb:
        r = py(
            sb,
            """
            import os, sys
            os.write(1, os.urandom(20 << 20))
            sys.stderr.write("e" * 100000)
        """,
        )
        assert r.exit_code == 0 and r.truncated
        head, marker = r.stdout.rsplit("\n[... output truncated: ", 1)
        assert marker == f"{(20 << 20) - cap} more bytes]"
        assert len(head.encode("utf-8", errors="surrogatepass")) >= cap // 2
        assert r.stderr == "e" * cap + f"\n[... output truncated: {100000 - cap} more bytes]"
        assert sb.exec(["echo", "fine"]).stdout == "fine\n"


def test_killing_the_exec_server_is_an_error_and_the_pool_gets_a_fresh_container(sandbox_image):
    with SandboxPool(size=1, config=TEST_CONFIG) as pool:
        with pytest.raises(SandboxError, match="closed the connection"), pool.lease() as sb:
            dead = sb.container.id
            sb.container.kill(signal="SIGKILL")  # PID 1 of the container is the server
            sb.exec(["echo", "hi"])
        with pool.lease(timeout=60) as sb:
            assert sb.container.id != dead
            assert sb.exec(["echo", "hi"]).stdout == "hi\n"
        assert pool.stats["replaced"] == 1


def test_failed_health_check_before_hand_out_replaces_the_container(sandbox_image):
    with SandboxPool(size=1, config=TEST_CONFIG) as pool:
        with pool.lease() as sb:
            first = sb.container
        first.kill(signal="SIGKILL")  # dies while idle in the pool
        with pool.lease(timeout=60) as sb:
            assert sb.container.id != first.id and sb.ping()
        assert pool.stats["failed_health"] == 1


def test_work_directory_is_wiped_and_containers_recycled_after_max_uses(sandbox_image):
    config = SandboxConfig(**{**TEST_CONFIG.__dict__, "max_uses": 2})
    with SandboxPool(size=1, config=config) as pool:
        ids = []
        for _ in range(3):
            with pool.lease(timeout=60) as sb:
                ids.append(sb.container.id)
                assert sb.exec(["ls", "-A"]).stdout == ""
                py(
                    sb,
                    """
                    import os, subprocess
                    os.makedirs("d/locked")
                    open("d/locked/f", "w").write("x")
                    os.chmod("d/locked", 0)
                    subprocess.Popen(["sleep", "1000"], start_new_session=True)
                """,
                )
        assert ids[0] == ids[1] != ids[2]


def test_docker_api_is_reachable_and_errors_are_typed():
    with pytest.raises(docker.errors.ImageNotFound):
        docker.from_env().images.get("ptgym-sandbox-does-not-exist")


def test_registry_recipe_dockerfile():
    text = dockerfile("python:3.11-slim")
    assert text.startswith("FROM python:3.11-slim\nRUN pip install --no-cache-dir msgpack")
    assert "USER 1000:1000\n" in text and "WORKDIR /work\n" in text


def test_apt_mirror_reads_deb822_and_one_line_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://security.example\nSuites: bookworm-security\n"
    )
    assert apt_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d/debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://old.example/debian bookworm main\n"
    )
    assert apt_mirror("bookworm", tmp_path) == "http://old.example/debian"
    assert apt_mirror("trixie", tmp_path) == "http://deb.debian.org/debian"
