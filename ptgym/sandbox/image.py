"""Build the ``ptgym-sandbox`` image (DESIGN §7).

The image holds Python 3, the ``msgpack`` module the exec server speaks, a non-root user
``sandbox`` (uid/gid 1000) and an empty ``/work``. The exec server itself is not baked in: the
pool passes its source to ``python3 -c`` when it starts a container, so changing the server never
needs a rebuild.

Two recipes:

- ``base=None`` (default, works air-gapped): a Debian root filesystem made with
  ``debootstrap --variant=minbase --include=python3,python3-msgpack`` from the Debian mirror in
  the host's apt sources, trimmed, streamed as a tar to the Docker API's import endpoint
  (``docker import``). Needs root and ``debootstrap`` (installed with apt-get when missing).
- ``base="python:3.11-slim"`` (or any official Python image; needs a registry): a three-line
  Dockerfile built through the Docker API.

Both stamp the label ``ptgym.sandbox.recipe`` with ``RECIPE_VERSION``; ``ensure_image`` rebuilds
only when the image is missing or was made by an older recipe.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import docker

IMAGE = "ptgym-sandbox"
RECIPE_VERSION = "1"
RECIPE_LABEL = "ptgym.sandbox.recipe"
SANDBOX_UID = 1000
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-msgpack")
# Parts of the minbase rootfs nothing in the sandbox reads (~60 MB of docs, manpages, apt state).
TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
)
IMAGE_CHANGES = (
    f"USER {SANDBOX_UID}:{SANDBOX_UID}",
    "WORKDIR /work",
    "ENV HOME=/work TMPDIR=/work LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1",
    'CMD ["python3"]',
    f"LABEL {RECIPE_LABEL}={RECIPE_VERSION}",
)


class ImageBuildError(RuntimeError):
    """The image could not be built; the message says what to install or change."""


def image_exists(client: docker.DockerClient, name: str = IMAGE) -> bool:
    """Whether ``name`` exists and was built by the current recipe."""
    try:
        labels = client.images.get(name).labels or {}
    except docker.errors.ImageNotFound:
        return False
    return labels.get(RECIPE_LABEL) == RECIPE_VERSION


def ensure_image(name: str = IMAGE, progress: Callable[[str], None] | None = None) -> str:
    """Build the image when it is missing or stale; a no-op (one API call) otherwise."""
    client = docker.from_env()
    try:
        if image_exists(client, name):
            return name
    finally:
        client.close()
    return build_image(name=name, progress=progress or (lambda _msg: None))


def build_image(
    force: bool = False,
    base: str | None = None,
    progress: Callable[[str], None] = print,
    name: str = IMAGE,
) -> str:
    """Build ``name`` and return it. ``base`` picks the registry recipe (see the module doc)."""
    client = docker.from_env(timeout=900)
    try:
        if not force and image_exists(client, name):
            progress(f"{name} is up to date (use --force to rebuild)")
            return name
        if base:
            _build_from_registry(client, base, name, progress)
        else:
            _build_from_debootstrap(client, name, progress)
        progress(f"built {name}")
        return name
    finally:
        client.close()


def dockerfile(base: str) -> str:
    """The Dockerfile of the registry recipe: an official Python image plus msgpack and a user."""
    env = " ".join(c.removeprefix("ENV ") for c in IMAGE_CHANGES if c.startswith("ENV "))
    return (
        f"FROM {base}\n"
        "RUN pip install --no-cache-dir msgpack"
        f" && groupadd -g {SANDBOX_UID} sandbox"
        f" && useradd -u {SANDBOX_UID} -g {SANDBOX_UID} -d /work -s /bin/sh sandbox"
        f" && mkdir -p /work && chown {SANDBOX_UID}:{SANDBOX_UID} /work\n"
        f"ENV {env}\n"
        f"USER {SANDBOX_UID}:{SANDBOX_UID}\n"
        "WORKDIR /work\n"
        f'LABEL {RECIPE_LABEL}="{RECIPE_VERSION}"\n'
        'CMD ["python3"]\n'
    )


def _build_from_registry(
    client: docker.DockerClient, base: str, name: str, progress: Callable[[str], None]
) -> None:
    progress(f"building {name} from {base}")
    try:
        _, logs = client.images.build(
            fileobj=io.BytesIO(dockerfile(base).encode()), tag=name, rm=True, pull=True
        )
    except (docker.errors.BuildError, docker.errors.APIError) as e:
        raise ImageBuildError(
            f"building from {base} failed ({e}); without a registry, build with base=None "
            "(debootstrap from the Debian mirror)"
        ) from e
    for chunk in logs:
        if "stream" in chunk and chunk["stream"].strip():
            progress(chunk["stream"].rstrip())


def apt_mirror(suite: str = DEFAULT_SUITE, root: Path = Path("/etc/apt")) -> str:
    """The Debian mirror URI from the host's apt sources (deb822 or one-line format)."""
    files = (
        sorted((root / "sources.list.d").glob("*.sources"))
        + sorted((root / "sources.list.d").glob("*.list"))
        + [root / "sources.list"]
    )
    for f in files:
        text = f.read_text() if f.is_file() else ""
        for stanza in re.split(r"\n\s*\n", text):  # deb822: blank-line separated stanzas
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.M))
            if fields.get("Types", "").split()[:1] == ["deb"] and suite in fields.get("Suites", ""):
                return fields["URIs"].split()[0]
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if m.group(2) == suite:
                return m.group(1)
    return DEFAULT_MIRROR


def _debootstrap() -> str:
    found = shutil.which("debootstrap")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "debootstrap"], check=True, stdout=subprocess.DEVNULL
        )
        found = shutil.which("debootstrap")
    if not found:
        raise ImageBuildError(
            "debootstrap is missing: install it with `apt-get install -y debootstrap` (as root), "
            "or build from a registry with --base python:3.11-slim"
        )
    return found


def _build_from_debootstrap(
    client: docker.DockerClient, name: str, progress: Callable[[str], None]
) -> None:
    if os.geteuid() != 0:
        raise ImageBuildError(
            "the debootstrap recipe needs root (it creates device nodes and root-owned files); "
            "run `sudo ptgym sandbox build`, or use --base python:3.11-slim with a registry"
        )
    tool = _debootstrap()
    mirror = apt_mirror()
    with tempfile.TemporaryDirectory(prefix="ptgym-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        progress(f"debootstrap {DEFAULT_SUITE} from {mirror} (about a minute)")
        cmd = [
            tool,
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            DEFAULT_SUITE,
            str(rootfs),
            mirror,
        ]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stdout.splitlines()[-15:])
            raise ImageBuildError(f"debootstrap failed (exit {done.returncode}):\n{tail}")
        _prepare_rootfs(rootfs)
        progress(f"importing the root filesystem as {name}")
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        try:
            client.api.import_image(
                src=_chunks(tar.stdout),
                repository=name,
                tag="latest",
                changes=list(IMAGE_CHANGES),
                stream_src=True,
            )
        finally:
            tar.stdout.close()
            tar.wait()
        if tar.returncode != 0:
            raise ImageBuildError(f"tar of the root filesystem failed (exit {tar.returncode})")


def _prepare_rootfs(rootfs: Path) -> None:
    """Trim the rootfs and add the ``sandbox`` user and its ``/work`` home."""
    for rel in TRIM:
        shutil.rmtree(rootfs / rel, ignore_errors=True)
    uid = SANDBOX_UID
    with open(rootfs / "etc/passwd", "a") as f:
        f.write(f"sandbox:x:{uid}:{uid}:ptgym sandbox:/work:/bin/sh\n")
    with open(rootfs / "etc/group", "a") as f:
        f.write(f"sandbox:x:{uid}:\n")
    work = rootfs / "work"
    work.mkdir(exist_ok=True)
    os.chown(work, uid, uid)


def _chunks(stream: io.BufferedReader, size: int = 1 << 20) -> Iterator[bytes]:
    while block := stream.read(size):
        yield block
