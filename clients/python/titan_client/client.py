"""client.py - a Python client for titan-worker (docs/PROTOCOL.md), with Lazy Pirate retries.

One TitanClient owns one ZeroMQ DEALER socket and is not thread-safe: use one client per thread.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Union

import zmq
import zmq.utils.z85

try:  # numpy is needed only by TitanClient.matmul
    import numpy as np
except ImportError:  # pragma: no cover
    np = None  # type: ignore[assignment]

__all__ = [
    "Reply", "TitanClient", "TitanError", "TitanBusy", "TitanTimeout", "TitanDeadline", "TitanBadRequest",
    "TitanUnknownOp", "TitanUnsupported", "TitanTooLarge", "TitanShuttingDown", "TitanUnauthorized",
    "TitanProtocolError",
]

Frame = Union[bytes, bytearray, memoryview, Any]  # anything with the buffer protocol (numpy arrays too)

_COPY_THRESHOLD = 64 * 1024  # larger frames are sent without a copy


class TitanError(Exception):
    """An error reply from the worker ({"error": ..., "code": ...}), or a local failure.

    `code` is the stable machine code (docs/PROTOCOL.md §7), `message` the text for people, and
    `reply` the whole reply header (None for local failures)."""

    def __init__(self, code: str, message: str, reply: Optional[dict] = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reply = reply


class TitanBusy(TitanError):
    """code "busy": every executor is busy and the queue is full; retry later or elsewhere."""


class TitanTimeout(TitanError):
    """No answer after every attempt (the client's own timeout; code "timeout").

    With CURVE, a worker that refuses this client's key, or whose key is not the given server key,
    never answers, so it looks like this too."""


class TitanDeadline(TitanError):
    """The worker's code "timeout": the request waited in its queue past `deadline_ms` and did not run."""


class TitanBadRequest(TitanError):
    """code "bad_request": the request is malformed."""


class TitanUnknownOp(TitanError):
    """code "unknown_op": no such operation."""


class TitanUnsupported(TitanError):
    """code "unsupported": the worker knows the request but this build cannot serve it (inference)."""


class TitanTooLarge(TitanError):
    """code "too_large": the request or its result is over a limit of the worker."""


class TitanShuttingDown(TitanError):
    """code "shutting_down": the worker is stopping; the request did not run."""


class TitanUnauthorized(TitanError):
    """code "unauthorized": this client's CURVE key is no longer admitted."""


class TitanProtocolError(TitanError):
    """A reply that does not follow the protocol (code "protocol")."""


_BY_CODE = {
    "busy": TitanBusy, "timeout": TitanDeadline, "bad_request": TitanBadRequest, "unknown_op": TitanUnknownOp,
    "unsupported": TitanUnsupported, "too_large": TitanTooLarge, "shutting_down": TitanShuttingDown,
    "unauthorized": TitanUnauthorized,
}


class Reply(NamedTuple):
    """A worker's reply: the parsed JSON header (frame 0) and the binary frames after it."""

    header: dict
    frames: List[bytes]

    @property
    def is_error(self) -> bool:
        """True when the worker answered an error."""
        return "error" in self.header

    def raise_for_error(self) -> "Reply":
        """Raises the matching TitanError subclass for an error reply; returns self otherwise."""
        if "error" in self.header:
            code = self.header.get("code")
            code = code if isinstance(code, str) and code else "remote"
            raise _BY_CODE.get(code, TitanError)(code, str(self.header["error"]), self.header)
        return self


def _key(value: Union[str, bytes, None], what: str) -> Optional[bytes]:
    if value is None:
        return None
    raw = value.encode("ascii") if isinstance(value, str) else bytes(value)
    raw = raw.strip()
    if len(raw) != 40:
        raise ValueError(f"{what} must be a 40-character Z85 key, got {len(raw)} characters")
    try:
        zmq.utils.z85.decode(raw)
    except Exception as e:
        raise ValueError(f"{what} is not valid Z85: {e}") from None
    return raw


class TitanClient:
    """A client for one titan-worker endpoint.

    Each request is tried up to 1 + `retries` times, each attempt waiting `timeout_ms` for the reply
    (Lazy Pirate: after a timeout the socket is closed with linger 0 and a fresh one is opened, so a
    late reply to an earlier attempt can never be taken for the answer to a later request). A call
    therefore never blocks longer than about timeout_ms × (retries + 1).

    CURVE: give the worker's public key as `server_key` (Z85). `public_key` and `secret_key` are this
    client's pair (both or neither); without them a fresh pair is made, which only a worker without
    --allow-keys admits.

    The client is not thread-safe. Use it as a context manager, or call close()."""

    def __init__(self, endpoint: str, timeout_ms: int = 5000, retries: int = 2,
                 server_key: Union[str, bytes, None] = None, public_key: Union[str, bytes, None] = None,
                 secret_key: Union[str, bytes, None] = None, context: Optional[zmq.Context] = None,
                 heartbeat_ms: int = 5000):
        if not isinstance(endpoint, str) or not endpoint:
            raise ValueError("endpoint must be a non-empty string such as tcp://127.0.0.1:5555")
        if not isinstance(timeout_ms, int) or timeout_ms <= 0:
            raise ValueError("timeout_ms must be a positive integer")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be an integer >= 0")
        if not isinstance(heartbeat_ms, int) or not 0 <= heartbeat_ms <= 3600000:
            raise ValueError("heartbeat_ms must be an integer from 0 to 3600000")
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.heartbeat_ms = heartbeat_ms
        self._server_key = _key(server_key, "server_key")
        pub, sec = _key(public_key, "public_key"), _key(secret_key, "secret_key")
        if (pub is None) != (sec is None):
            raise ValueError("give both public_key and secret_key, or neither")
        if pub is not None and self._server_key is None:
            raise ValueError("public_key and secret_key need server_key")
        if self._server_key is not None:
            if not zmq.has("curve"):
                raise TitanError("local", "this libzmq has no CURVE support")
            if pub is None:
                pub, sec = zmq.curve_keypair()
            elif zmq.curve_public(sec) != pub:
                raise ValueError("public_key does not match secret_key")
        self._public_key, self._secret_key = pub, sec
        self._own_context = context is None
        self._context: Optional[zmq.Context] = context
        self._socket: Optional[zmq.Socket] = None
        self._closed = False
        #: how many retries the last call needed (0: the first attempt answered)
        self.last_retries = 0

    # --- lifetime ---

    def connect(self) -> "TitanClient":
        """Opens the socket now (requests open it anyway when needed). Returns self."""
        self._check_open()
        if self._socket is None:
            self._open_socket()
        return self

    def close(self) -> None:
        """Closes the socket with linger 0 (dropping anything unsent) and the client's own context."""
        self._close_socket()
        if self._own_context and self._context is not None:
            self._context.term()
        self._context = None
        self._closed = True

    def __enter__(self) -> "TitanClient":
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the real way
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise TitanError("local", "the client is closed")

    def _open_socket(self) -> None:
        if self._context is None:
            self._context = zmq.Context()
        s = self._context.socket(zmq.DEALER)
        try:
            s.setsockopt(zmq.LINGER, 0)
            if self.heartbeat_ms:
                s.setsockopt(zmq.HEARTBEAT_IVL, self.heartbeat_ms)
                s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * self.heartbeat_ms)
                s.setsockopt(zmq.HEARTBEAT_TTL, 3 * self.heartbeat_ms)
            if self._server_key is not None:
                s.curve_serverkey = self._server_key
                s.curve_publickey = self._public_key
                s.curve_secretkey = self._secret_key
            s.connect(self.endpoint)
        except zmq.ZMQError as e:
            s.close(0)
            raise TitanError("local", f"cannot connect to {self.endpoint}: {e}") from None
        self._socket = s

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None

    # --- requests ---

    def request(self, header: Union[Mapping[str, Any], str, bytes], frames: Iterable[Frame] = ()) -> Reply:
        """Sends one request and returns the worker's reply, error replies included (see
        Reply.raise_for_error). A dict header is sent as compact JSON with "id" first; a str or bytes
        header is sent verbatim. Each frame is anything with the buffer protocol.

        Raises TitanTimeout when no attempt is answered, TitanProtocolError for a malformed reply.
        When the request has an "id", a reply carrying another id is not taken for its answer."""
        self._check_open()
        text, want_id = self._encode_header(header)
        body = [text] + [memoryview(f).cast("B") if not isinstance(f, bytes) else f for f in frames]
        for attempt in range(self.retries + 1):
            self.last_retries = attempt
            if self._socket is None:
                self._open_socket()
            done = False
            try:
                reply = self._attempt(body, want_id)
                if reply is not None:
                    done = True
                    return reply
            finally:
                if not done:  # timed out, failed, or interrupted: the socket's state is unknown
                    self._close_socket()
        raise TitanTimeout("timeout", f"no answer from {self.endpoint} after {self.retries + 1} attempt(s) of "
                           f"{self.timeout_ms} ms" + (" (with CURVE, this is also what a worker that refused "
                                                      "this client's key, or whose key is not the given server "
                                                      "key, looks like)" if self._server_key else ""))

    @staticmethod
    def _encode_header(header: Union[Mapping[str, Any], str, bytes]):
        if isinstance(header, (str, bytes)):
            text = header.encode("utf-8") if isinstance(header, str) else header
            want = None
            try:
                parsed = json.loads(text)
                if isinstance(parsed, dict):
                    want = parsed.get("id")
            except ValueError:
                pass
            return text, want
        if not isinstance(header, Mapping):
            raise TypeError("header must be a dict, str or bytes")
        ordered = dict(header)
        if "id" in ordered:
            ordered = {"id": ordered.pop("id"), **ordered}
        text = json.dumps(ordered, separators=(",", ":"), allow_nan=True).encode("utf-8")
        return text, ordered.get("id")

    def _attempt(self, body: Sequence[Any], want_id: Any) -> Optional[Reply]:
        """One attempt: sends and waits up to timeout_ms. Returns the reply, or None on timeout."""
        import time
        sock = self._socket
        assert sock is not None
        deadline = time.monotonic() + self.timeout_ms / 1000
        parts = [b""] + list(body)
        try:
            if not sock.poll(self.timeout_ms, zmq.POLLOUT):
                return None
            for i, p in enumerate(parts):
                big = not isinstance(p, bytes) or len(p) > _COPY_THRESHOLD
                sock.send(p, zmq.SNDMORE if i + 1 < len(parts) else 0, copy=not big)
        except zmq.ZMQError as e:
            raise TitanError("local", f"request to {self.endpoint} failed: {e}") from None
        while True:
            left = int((deadline - time.monotonic()) * 1000)
            if left <= 0 or not sock.poll(max(left, 1), zmq.POLLIN):
                return None
            msg = sock.recv_multipart()
            if len(msg) < 2 or msg[0] != b"":
                raise TitanProtocolError("protocol", f"reply from {self.endpoint} lacks the empty delimiter "
                                         "frame or a header")
            try:
                header = json.loads(msg[1])
            except ValueError as e:
                raise TitanProtocolError("protocol", f"reply from {self.endpoint} is not JSON: {e}") from None
            if not isinstance(header, dict):
                raise TitanProtocolError("protocol", f"reply from {self.endpoint} is not a JSON object")
            if want_id is not None and "id" in header and header["id"] != want_id:
                continue  # a stale reply to some other request: keep waiting for ours
            return Reply(header, msg[2:])

    def call(self, header: Union[Mapping[str, Any], str, bytes], frames: Iterable[Frame] = ()) -> Reply:
        """request(), then raises the matching TitanError for an error reply."""
        return self.request(header, frames).raise_for_error()

    # --- typed calls ---

    def ping(self) -> dict:
        """{"op":"ping"}: returns the reply (status, gpu, backend, version, protocol)."""
        h = self.call({"op": "ping"}).header
        if h.get("status") != "ok":
            raise TitanProtocolError("protocol", "ping reply lacks \"status\":\"ok\"", h)
        return h

    def gpu_info(self) -> dict:
        """{"op":"gpu_info"}: returns the device description (name, total_memory_gb, ...)."""
        h = self.call({"op": "gpu_info"}).header
        if "name" not in h:
            raise TitanProtocolError("protocol", "gpu_info reply lacks \"name\"", h)
        return h

    def ops(self) -> dict:
        """{"op":"ops"}: the operations, the protocol version and the limits in force."""
        return self.call({"op": "ops"}).header

    def matrix_multiply(self, a: Sequence[Sequence[float]], b: Sequence[Sequence[float]],
                        dtype: Optional[str] = None) -> List[List[float]]:
        """The design's JSON form: C = A × B with nested lists; float32 unless dtype="float64".
        Non-finite numbers travel as NaN/Infinity tokens, which the worker accepts."""
        header: dict = {"op": "matrix_multiply", "a": _plain(a), "b": _plain(b)}
        if dtype is not None:
            header["dtype"] = dtype
        h = self.call(header).header
        result = h.get("result")
        if not isinstance(result, list):
            raise TitanProtocolError("protocol", "matrix_multiply reply lacks a \"result\" array", h)
        return result

    def matmul(self, a: "np.ndarray", b: "np.ndarray") -> "np.ndarray":
        """C = A × B over binary frames. a and b are 2-D float32 or float64 arrays of one dtype, with
        a.shape[1] == b.shape[0]; they are sent little-endian and C-contiguous. Returns a new array."""
        if np is None:  # pragma: no cover
            raise TitanError("local", "matmul needs numpy")
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"matmul needs 2-D arrays, got {a.ndim}-D and {b.ndim}-D")
        if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8) or a.dtype != b.dtype:
            raise ValueError(f"matmul needs two float32 or two float64 arrays, got {a.dtype} and {b.dtype}")
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"inner dimensions do not match: {a.shape} x {b.shape}")
        if 0 in a.shape or 0 in b.shape:
            raise ValueError("matmul needs non-empty arrays")
        le = a.dtype.newbyteorder("<")
        a, b = np.ascontiguousarray(a, dtype=le), np.ascontiguousarray(b, dtype=le)
        name = "float32" if a.dtype.itemsize == 4 else "float64"
        header = {"op": "matrix_multiply", "a": {"dtype": name, "shape": list(a.shape), "frame": 1},
                  "b": {"dtype": name, "shape": list(b.shape), "frame": 2}}
        r = self.call(header, [a, b])
        res = r.header.get("result")
        m, n = a.shape[0], b.shape[1]
        if (not isinstance(res, dict) or res.get("dtype") != name or res.get("shape") != [m, n]
                or res.get("frame") != 1 or len(r.frames) != 1 or len(r.frames[0]) != m * n * a.dtype.itemsize):
            raise TitanProtocolError("protocol", f"malformed matrix_multiply reply: {r.header!r} with "
                                     f"{len(r.frames)} frame(s)", r.header)
        return np.frombuffer(r.frames[0], dtype=le).reshape(m, n).astype(a.dtype.newbyteorder("="))


def _plain(x: Any) -> Any:
    """Nested sequences (numpy arrays too) as nested lists of floats, for the JSON form."""
    if np is not None and isinstance(x, np.ndarray):
        return x.tolist()
    return [_plain(v) for v in x] if isinstance(x, (list, tuple)) else x
