"""Host side of the exec-server protocol: length-prefixed msgpack over an attached socket.

A frame is a 4-byte big-endian length and a msgpack map (``server.py`` speaks the same). The
host writes frames to the container's stdin through the Docker API attach socket; what comes
back is the container's stdout, which Docker multiplexes (``tty=False``) into blocks with an
8-byte header ``[stream, 0, 0, 0, size (uint32 BE)]``. ``Channel`` strips those headers and
reassembles frames.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

import msgpack

FRAME = struct.Struct(">I")
DOCKER_HEADER = struct.Struct(">BxxxI")
MAX_FRAME = 64 << 20
STDOUT = 1


class ChannelError(RuntimeError):
    """The exec server is unreachable: it closed the stream, timed out or sent garbage."""


def pack(obj: dict[str, Any]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return FRAME.pack(len(body)) + body


class Channel:
    """One request/response conversation with an exec server (not thread safe: one user)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._raw = bytearray()  # bytes from the socket, still with Docker block headers
        self._data = bytearray()  # demultiplexed stdout bytes

    def request(self, obj: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait up to ``timeout`` seconds for its reply."""
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(pack(obj))
            size = FRAME.unpack(self._read(FRAME.size))[0]
            if size > MAX_FRAME:
                raise ChannelError(f"reply frame of {size} bytes exceeds {MAX_FRAME}")
            reply = msgpack.unpackb(self._read(size), raw=False)
        except TimeoutError as e:
            raise ChannelError(f"no reply from the exec server within {timeout:.1f}s") from e
        except OSError as e:
            raise ChannelError(f"the exec server connection failed: {e}") from e
        except (ValueError, msgpack.UnpackException) as e:
            raise ChannelError(f"malformed reply from the exec server: {e}") from e
        if not isinstance(reply, dict):
            raise ChannelError(f"malformed reply from the exec server: {reply!r:.100}")
        return reply

    def _read(self, n: int) -> bytes:
        while len(self._data) < n:
            self._fill()
        out = bytes(self._data[:n])
        del self._data[:n]
        return out

    def _fill(self) -> None:
        """Read one more Docker block and append its stdout payload to ``_data``."""
        while True:
            if len(self._raw) >= DOCKER_HEADER.size:
                stream, size = DOCKER_HEADER.unpack_from(self._raw)
                end = DOCKER_HEADER.size + size
                if len(self._raw) >= end:
                    if stream == STDOUT:
                        self._data += self._raw[DOCKER_HEADER.size : end]
                    del self._raw[:end]
                    return
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ChannelError("the exec server closed the connection (container gone?)")
            self._raw += chunk

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
