"""client.py - a Python client for titan-worker (docs/PROTOCOL.md), with Lazy Pirate retries.

One TitanClient owns one ZeroMQ DEALER socket and is not thread-safe: use one client per thread.
Resident tensors (PROTOCOL.md §4.2, §5.7): tensor_put/tensor_get/tensor_free/tensor_list and matmul with
handle operands; give the client an `identity` so that its tensors stay its own across reconnects.
Encoder models (PROTOCOL.md §5.8): embed (a float32 numpy array, always over the binary form) and rerank.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Union

import zmq
import zmq.utils.z85

try:  # numpy is needed only by TitanClient.matmul and the tensor_* calls
    import numpy as np
except ImportError:  # pragma: no cover
    np = None  # type: ignore[assignment]

__all__ = [
    "Reply", "TitanClient", "TitanError", "TitanBusy", "TitanTimeout", "TitanDeadline", "TitanBadRequest",
    "TitanUnknownOp", "TitanUnsupported", "TitanTooLarge", "TitanShuttingDown", "TitanUnauthorized",
    "TitanQuotaExceeded", "TitanNotFound", "TitanProtocolError", "RerankResult", "Ranking",
]

Frame = Union[bytes, bytearray, memoryview, Any]  # anything with the buffer protocol (numpy arrays too)

_COPY_THRESHOLD = 64 * 1024  # larger frames are sent without a copy

IDENTITY_MAX = 64  # the longest `identity` (libtitan's TITAN_CLIENT_IDENTITY_MAX)
MAX_RANK = 8       # the highest tensor rank the worker takes (PROTOCOL.md §4.1)

# A handle goes into a JSON header as it is: only the characters handles are made of. The worker's
# are "t-" and 24 lowercase hex digits; this accepts what libtitan accepts (under TITAN_TENSOR_REF_MAX).
_REF_RE = re.compile(r"[A-Za-z0-9_-]{1,63}")


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
    """code "unsupported": the worker knows the request but cannot serve it (inference without models,
    resident tensors on an engine that keeps none)."""


class TitanTooLarge(TitanError):
    """code "too_large": the request or its result is over a limit of the worker."""


class TitanShuttingDown(TitanError):
    """code "shutting_down": the worker is stopping; the request did not run."""


class TitanUnauthorized(TitanError):
    """code "unauthorized": this client's CURVE key is no longer admitted, or a resident-tensor handle
    belongs to another client (another CURVE key, or another routing id: see TitanClient's identity)."""


class TitanQuotaExceeded(TitanError):
    """code "quota_exceeded": a resident tensor (tensor_put, matmul with keep=True) would take this client
    over --tensor-quota-mb or --max-tensors, or the worker over --tensor-memory-mb. Nothing was stored
    and nothing was evicted: free some with tensor_free."""


class TitanNotFound(TitanError):
    """code "not_found": no such resident tensor here (freed, expired, never made, or the worker restarted)."""


class TitanProtocolError(TitanError):
    """A reply that does not follow the protocol (code "protocol")."""


_BY_CODE = {
    "busy": TitanBusy, "timeout": TitanDeadline, "bad_request": TitanBadRequest, "unknown_op": TitanUnknownOp,
    "unsupported": TitanUnsupported, "too_large": TitanTooLarge, "shutting_down": TitanShuttingDown,
    "unauthorized": TitanUnauthorized, "quota_exceeded": TitanQuotaExceeded, "not_found": TitanNotFound,
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


class RerankResult(NamedTuple):
    """One document of a rerank answer: its `index` in the request's documents, the cross-encoder's raw
    logit `score`, and `relevance_score`, its sigmoid (0 to 1)."""

    index: int
    score: float
    relevance_score: float


class Ranking(list):
    """rerank's answer: a list of RerankResult, best first (ties in the documents' order), holding only the
    best `top_n` when that was asked. The same figures as numpy arrays, in that order: `indices`, `scores`,
    `relevance_scores`; `model` and `usage` ({"prompt_tokens", "total_tokens"}) are the reply's."""

    def __init__(self, results: Iterable[RerankResult], model: Optional[str], usage: dict):
        super().__init__(results)
        self.model = model
        self.usage = usage

    @property
    def indices(self) -> "np.ndarray":
        """The documents' indices, best first (int64)."""
        return np.array([r.index for r in self], dtype=np.int64)

    @property
    def scores(self) -> "np.ndarray":
        """The raw logits, best first (float64: the worker writes them as doubles)."""
        return np.array([r.score for r in self], dtype=np.float64)

    @property
    def relevance_scores(self) -> "np.ndarray":
        """The logits' sigmoids, best first (float64)."""
        return np.array([r.relevance_score for r in self], dtype=np.float64)

    def __repr__(self) -> str:
        return f"Ranking({list.__repr__(self)}, model={self.model!r}, usage={self.usage!r})"


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


def _identity(value: Any) -> Optional[bytes]:
    if value is None:
        return None
    if (not isinstance(value, str) or not 1 <= len(value) <= IDENTITY_MAX
            or any(not "\x21" <= ch <= "\x7e" for ch in value)):
        raise ValueError(f"identity must be a string of 1 to {IDENTITY_MAX} printable ASCII characters without "
                         f"spaces, got {value!r}")
    return value.encode("ascii")


def _ref(value: Any, what: str = "ref") -> str:
    """Checks a resident-tensor handle locally (before it goes into a JSON header)."""
    if not isinstance(value, str) or not _REF_RE.fullmatch(value):
        raise ValueError(f"{what} must be a resident-tensor handle (1 to 63 of A-Z a-z 0-9 _ -, such as "
                         f"'t-' and 24 hex digits), got {value!r}")
    return value


_DTYPES = {4: "float32", 8: "float64"}


def _float_array(x: Any, what: str, ranks: Sequence[int]) -> "np.ndarray":
    """x as a C-contiguous little-endian float32/float64 array of a rank in `ranks`, without empty
    dimensions (a copy only when needed); ValueError otherwise."""
    if np is None:  # pragma: no cover
        raise TitanError("local", "tensors need numpy")
    x = np.asarray(x)
    if x.dtype.kind != "f" or x.dtype.itemsize not in _DTYPES:
        raise ValueError(f"{what} must be a float32 or float64 array, got {x.dtype}")
    if x.ndim not in ranks:
        want = f"{ranks[0]}-D" if len(ranks) == 1 else f"of rank {ranks[0]} to {ranks[-1]}"
        raise ValueError(f"{what} must be {want}, got {x.ndim}-D")
    if 0 in x.shape:
        raise ValueError(f"{what} must not be empty, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))


def _tensor_from(r: "Reply", what: str, shape: Optional[Sequence[Optional[int]]] = None,
                 dtype: Optional[str] = None, key: str = "result") -> "np.ndarray":
    """The binary result of `r` ({"result": {"dtype", "shape", "frame": 1}} and one frame; the descriptor
    under `key`) as a new array in native byte order; `shape` (None for "any") and `dtype`, when given, are
    what it must be."""
    res = r.header.get(key)
    ok = isinstance(res, dict) and res.get("dtype") in ("float32", "float64") and res.get("frame") == 1
    dims = res.get("shape") if ok else None
    ok = ok and isinstance(dims, list) and 1 <= len(dims) <= MAX_RANK and \
        all(type(d) is int and d >= 1 for d in dims) and len(r.frames) == 1
    if ok and dtype is not None:
        ok = res["dtype"] == dtype
    if ok and shape is not None:
        ok = len(dims) == len(shape) and all(w is None or w == d for w, d in zip(shape, dims))
    if ok:
        le = np.dtype("<f4" if res["dtype"] == "float32" else "<f8")
        ok = len(r.frames[0]) == int(np.prod(dims, dtype=object)) * le.itemsize
    if not ok:
        raise TitanProtocolError("protocol", f"malformed {what} reply: {r.header!r} with {len(r.frames)} "
                                 "frame(s)", r.header)
    return np.frombuffer(r.frames[0], dtype=le).reshape(dims).astype(le.newbyteorder("="))


def _handle_from(h: dict, what: str) -> str:
    ref = h.get("ref")
    if not isinstance(ref, str) or not _REF_RE.fullmatch(ref):
        raise TitanProtocolError("protocol", f"{what} reply lacks a valid tensor handle \"ref\"", h)
    return ref


class TitanClient:
    """A client for one titan-worker endpoint.

    Each request is tried up to 1 + `retries` times, each attempt waiting `timeout_ms` for the reply
    (Lazy Pirate: after a timeout the socket is closed with linger 0 and a fresh one is opened, so a
    late reply to an earlier attempt can never be taken for the answer to a later request; with an
    `identity`, the per-attempt tag below ensures this). A call therefore never blocks longer than about
    timeout_ms × (retries + 1).

    CURVE: give the worker's public key as `server_key` (Z85). `public_key` and `secret_key` are this
    client's pair (both or neither); without them a fresh pair is made, which only a worker without
    --allow-keys admits.

    identity: a name for this client on the worker (1 to 64 printable ASCII characters, no spaces),
    set as the ZeroMQ routing id of every socket the client opens. The worker's resident tensors belong
    to the client that made them: its CURVE key with CURVE, else its routing id. Without an identity that
    id is per connection, so after a retry (which reconnects) or in another TitanClient the tensors made
    before answer "unauthorized"; with one, they stay this client's. Two live clients must not share an
    identity: the newer connection takes the name over. With an identity, each attempt also carries a tag
    frame in its envelope (PROTOCOL.md §1.1) that changes on every attempt, and a reply with another tag
    (a late answer to an abandoned attempt, which the worker now routes to the new socket) is dropped.

    The client is not thread-safe. Use it as a context manager, or call close()."""

    def __init__(self, endpoint: str, timeout_ms: int = 5000, retries: int = 2,
                 server_key: Union[str, bytes, None] = None, public_key: Union[str, bytes, None] = None,
                 secret_key: Union[str, bytes, None] = None, context: Optional[zmq.Context] = None,
                 heartbeat_ms: int = 5000, identity: Optional[str] = None):
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
        self._identity = _identity(identity)
        #: the routing id given as `identity`, or None
        self.identity = identity
        # The tag of the current attempt (with an identity). Another client object may have used this
        # identity before (a restarted process): start somewhere else than it, so that its late replies
        # cannot match.
        self._tag = int.from_bytes(os.urandom(4), "little")
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
        #: the last embed's or rerank's "usage": {"prompt_tokens": N, "total_tokens": N} (None before one)
        self.last_usage: Optional[dict] = None
        #: how many replies this client has dropped as stale, in all: replies to an earlier attempt (another
        #: tag, with an identity) and replies carrying another request's "id"
        self.dropped_replies = 0

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
            if self._identity is not None:
                s.setsockopt(zmq.ROUTING_ID, self._identity)
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
        When the request has an "id", a reply carrying another id is not taken for its answer; with an
        identity, neither is a reply whose tag is not this attempt's (dropped_replies counts both)."""
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
        tag = None
        if self._identity is not None:
            # An envelope frame the worker echoes back (PROTOCOL.md §1.1), new for each attempt.
            self._tag = (self._tag + 1) & 0xFFFFFFFF
            tag = b"@%08x" % self._tag
            parts.insert(0, tag)
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
            if tag is not None:
                if not msg or msg[0] != tag:
                    self.dropped_replies += 1
                    continue  # a reply to an earlier attempt, routed to this socket by the identity: drop it
                msg = msg[1:]
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
                self.dropped_replies += 1
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

    def matmul(self, a: Union["np.ndarray", str], b: Union["np.ndarray", str],
               keep: bool = False) -> Union["np.ndarray", str]:
        """C = A × B over binary frames. a and b are 2-D float32 or float64 arrays of one dtype, with
        a.shape[1] == b.shape[0]; they are sent little-endian and C-contiguous. Returns a new array.

        Either operand may instead be a resident tensor's handle (a str from tensor_put or from an earlier
        matmul with keep=True), sent as {"ref": handle}: the tensor must be a matrix of the other
        operand's dtype (the worker checks, answering bad_request, not_found or unauthorized). The result
        then has the resident tensor's dtype.

        keep=True leaves C in the worker's memory as this client's resident tensor and returns its handle
        (a str) instead of the data; it counts against the quotas (TitanQuotaExceeded)."""
        if np is None:  # pragma: no cover
            raise TitanError("local", "matmul needs numpy")
        if not isinstance(keep, bool):
            raise ValueError("keep must be True or False")
        ops: List[Any] = []
        for name, x in (("a", a), ("b", b)):
            ops.append(_ref(x, name) if isinstance(x, str) else _float_array(x, name, (2,)))
        a, b = ops
        arrays = [x for x in (a, b) if not isinstance(x, str)]
        if len(arrays) == 2:
            if a.dtype != b.dtype:
                raise ValueError(f"matmul needs two float32 or two float64 arrays, got {a.dtype} and {b.dtype}")
            if a.shape[1] != b.shape[0]:
                raise ValueError(f"inner dimensions do not match: {a.shape} x {b.shape}")
        header: dict = {"op": "matrix_multiply"}
        frames = []
        for name, x in (("a", a), ("b", b)):
            if isinstance(x, str):
                header[name] = {"ref": x}
            else:
                frames.append(x)
                header[name] = {"dtype": _DTYPES[x.dtype.itemsize], "shape": list(x.shape), "frame": len(frames)}
        if keep:
            header["keep"] = True
        r = self.call(header, frames)
        m = None if isinstance(a, str) else a.shape[0]
        n = None if isinstance(b, str) else b.shape[1]
        dtype = _DTYPES[arrays[0].dtype.itemsize] if arrays else None
        if keep:
            res = r.header.get("result")
            if not isinstance(res, dict) or r.frames:
                raise TitanProtocolError("protocol", f"malformed matrix_multiply (keep) reply: {r.header!r}",
                                         r.header)
            return _handle_from(res, "matrix_multiply (keep)")
        return _tensor_from(r, "matrix_multiply", shape=(m, n), dtype=dtype)

    # --- resident tensors (PROTOCOL.md §5.7) ---

    def tensor_put(self, array: "np.ndarray") -> str:
        """Stores a float32 or float64 array of rank 1 to 8 in the worker's (device) memory as this
        client's resident tensor, and returns its handle ("t-" and 24 hex digits). The array goes in a
        binary frame, little-endian and C-contiguous (a copy only when needed). Raises ValueError for
        another dtype, rank or an empty array, TitanQuotaExceeded when over a quota."""
        x = _float_array(array, "tensor_put's array", tuple(range(1, MAX_RANK + 1)))
        header = {"op": "tensor_put", "tensor": {"dtype": _DTYPES[x.dtype.itemsize], "shape": list(x.shape),
                                                 "frame": 1}}
        return _handle_from(self.call(header, [x]).header, "tensor_put")

    def tensor_get(self, ref: str) -> "np.ndarray":
        """Reads a resident tensor back (binary form) as a new array of its dtype and shape. Raises
        TitanNotFound for a handle the worker does not have, TitanUnauthorized for another client's."""
        return _tensor_from(self.call({"op": "tensor_get", "ref": _ref(ref)}), "tensor_get")

    def tensor_free(self, ref: str) -> int:
        """Frees a resident tensor; returns the bytes freed. Raises TitanNotFound or TitanUnauthorized
        as tensor_get does."""
        h = self.call({"op": "tensor_free", "ref": _ref(ref)}).header
        freed = h.get("bytes")
        if type(freed) is not int or freed < 0:
            raise TitanProtocolError("protocol", "tensor_free reply lacks \"bytes\"", h)
        return freed

    def tensor_free_all(self) -> int:
        """Frees every resident tensor of this client ({"op":"tensor_free","all":true}); returns how many."""
        h = self.call({"op": "tensor_free", "all": True}).header
        freed = h.get("freed")
        if type(freed) is not int or freed < 0:
            raise TitanProtocolError("protocol", "tensor_free (all) reply lacks \"freed\"", h)
        return freed

    def tensor_list(self) -> dict:
        """This client's resident tensors: the reply, {"tensors": [{"ref", "dtype", "shape", "bytes",
        "age_s", "idle_s"}...], "bytes", "count", "quota": {"client_bytes", "client_tensors",
        "worker_bytes", "idle_ttl_s"}, "worker_bytes"}."""
        h = self.call({"op": "tensor_list"}).header
        if not isinstance(h.get("tensors"), list) or type(h.get("count")) is not int:
            raise TitanProtocolError("protocol", "tensor_list reply lacks \"tensors\" and \"count\"", h)
        return h

    # --- encoder models (PROTOCOL.md §5.8) ---

    def embed(self, model: str, input: Any, *, normalize: Optional[bool] = None, truncate: bool = False,
              dimensions: Optional[int] = None) -> "np.ndarray":
        """Embeds texts or token ids with a bi-encoder served by `--models`; returns a new float32 array
        [n, dims], one row per input in the request's order (a single string or a flat list of ids is n = 1).

        input: a str, a list of str, a list of token ids (one input, [CLS] ... [SEP] included), or a list of
        lists of ids; numpy integer arrays (1-D or 2-D) and numpy integers are taken too. What the input
        holds is the worker's to judge (an empty list, a mix, an id outside the vocabulary: TitanBadRequest).
        normalize: L2-normalise each row (default: the model's own choice). truncate: cut inputs over the
        model's max_tokens instead of refusing them. dimensions: a smaller size the model's manifest lists
        (Matryoshka). The embeddings always come back in the binary form (one float32 frame), never as JSON
        numbers. The reply's token counts are left in `last_usage`.

        Raises TitanNotFound (no such model), TitanUnsupported (a cross-encoder: use rerank), TitanBadRequest,
        TitanTooLarge, TitanBusy (the model's queue is full), ValueError for a bad option (nothing sent)."""
        if np is None:  # pragma: no cover
            raise TitanError("local", "embed needs numpy")
        header: dict = {"op": "embed", "model": _model(model), "input": _embed_input(input), "binary": True}
        if normalize is not None:
            header["normalize"] = _flag(normalize, "normalize")
        if _flag(truncate, "truncate"):
            header["truncate"] = True
        if dimensions is not None:
            header["dimensions"] = _positive(dimensions, "dimensions")
        r = self.call(header)
        x = header["input"]
        n = 1 if isinstance(x, str) or (x and not isinstance(x[0], (list, str))) else len(x)
        dims = r.header.get("dims")
        out = _tensor_from(r, "embed", shape=(n, dims if type(dims) is int else -1), dtype="float32",
                           key="embeddings")
        if dimensions is not None and out.shape[1] != dimensions:
            raise TitanProtocolError("protocol", f"embed asked for {dimensions} dimensions and got {out.shape[1]}",
                                     r.header)
        self.last_usage = _usage(r.header, "embed")
        return out

    def rerank(self, model: str, query: str, documents: Sequence[str], *, top_n: Optional[int] = None,
               truncate: bool = False) -> Ranking:
        """Scores each document against the query with a cross-encoder served by `--models`; returns a
        Ranking: a list of RerankResult(index, score, relevance_score), best first, with the same as numpy
        arrays (`indices`, `scores`, `relevance_scores`). top_n: only the best n. truncate: cut each
        (query, document) pair over max_tokens instead of refusing it. The token counts are also left in
        `last_usage`.

        Raises TitanNotFound, TitanUnsupported (a bi-encoder, or a cross-encoder with more than one label),
        TitanBadRequest (e.g. no documents), TitanTooLarge, TitanBusy; ValueError for a bad option."""
        if np is None:  # pragma: no cover
            raise TitanError("local", "rerank needs numpy")
        docs = documents if isinstance(documents, (str, bytes)) else list(documents)
        header: dict = {"op": "rerank", "model": _model(model), "query": query, "documents": docs}
        if top_n is not None:
            header["top_n"] = _positive(top_n, "top_n")
        if _flag(truncate, "truncate"):
            header["truncate"] = True
        h = self.call(header).header
        res = h.get("results")
        want = min(len(docs), top_n if top_n is not None else len(docs)) if isinstance(docs, list) else -1
        if not isinstance(res, list) or len(res) != want:
            raise TitanProtocolError("protocol", f"rerank reply lacks \"results\" for its {want} document(s)", h)
        out, seen = [], set()
        for x in res:
            ok = isinstance(x, dict) and type(x.get("index")) is int and 0 <= x["index"] < len(docs) and \
                x["index"] not in seen and all(type(x.get(k)) in (int, float) for k in ("score", "relevance_score"))
            if not ok:
                raise TitanProtocolError("protocol", f"malformed rerank result {x!r}", h)
            seen.add(x["index"])
            out.append(RerankResult(x["index"], float(x["score"]), float(x["relevance_score"])))
        self.last_usage = _usage(h, "rerank")
        return Ranking(out, h.get("model") if isinstance(h.get("model"), str) else None, self.last_usage)


def _plain(x: Any) -> Any:
    """Nested sequences (numpy arrays too) as nested lists of floats, for the JSON form."""
    if np is not None and isinstance(x, np.ndarray):
        return x.tolist()
    return [_plain(v) for v in x] if isinstance(x, (list, tuple)) else x


def _model(x: Any) -> str:
    if not isinstance(x, str) or not x:
        raise ValueError(f"model must be a model's name (a non-empty str; list_models names them), got {x!r}")
    return x


def _flag(x: Any, what: str) -> bool:
    if not isinstance(x, bool):
        raise ValueError(f"{what} must be True or False, got {x!r}")
    return x


def _positive(x: Any, what: str) -> int:
    if np is not None and isinstance(x, np.integer):
        x = int(x)
    if type(x) is not int or x < 1:
        raise ValueError(f"{what} must be a positive integer, got {x!r}")
    return x


def _ids(x: Any) -> Any:
    """One input's token ids as plain ints where they are numpy's (anything else goes as it is)."""
    if np is not None and isinstance(x, np.ndarray):
        if x.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got a {x.dtype} array")
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return [int(v) if np is not None and isinstance(v, np.integer) else v for v in x]
    return int(x) if np is not None and isinstance(x, np.integer) else x


def _embed_input(x: Any) -> Any:
    """embed's input as plain JSON values: a str, or a list of str, ids or lists of ids (numpy arrays and
    integers made lists and ints). Whether it is a valid input (not empty, not mixed) the worker says."""
    if isinstance(x, str):
        return x
    if np is not None and isinstance(x, np.ndarray):
        if x.ndim not in (1, 2):
            raise ValueError(f"token ids must be a 1-D or 2-D array, got {x.ndim}-D")
        return _ids(x)
    if isinstance(x, (list, tuple)):
        return [v if isinstance(v, str) else _ids(v) for v in x]
    raise ValueError("input must be a str, a list of str, a list of token ids or a list of lists of token ids, "
                     f"got {type(x).__name__}")


def _usage(h: dict, what: str) -> dict:
    u = h.get("usage")
    if not isinstance(u, dict) or any(type(u.get(k)) is not int or u[k] < 0
                                      for k in ("prompt_tokens", "total_tokens")):
        raise TitanProtocolError("protocol", f"{what} reply lacks \"usage\" with prompt_tokens and total_tokens", h)
    return {"prompt_tokens": u["prompt_tokens"], "total_tokens": u["total_tokens"]}
