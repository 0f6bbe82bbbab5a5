"""router.py - libtitan's backend router (compute_backends.yaml) from Python: a ctypes binding, not a second router.

    from titan_client import Router
    with Router.from_file("compute_backends.yaml") as r:
        c = r.matmul(a, b)                  # the first healthy backend with room (overflow, failover, breaker)
        c = r.matmul(a, b, split=True)      # the rows divided among the healthy backends
        print(r.last_route)                 # where it went and what was passed over
        for b in r.backends(probe=True):
            print(b.name, b.state, b.reason)

Every decision (priority order, overflow on busy, failover on timeouts, the circuit breaker and its half-open
probes, split shares, `type: local` backends in this process) is libtitan's own code (include/titan/router.h):
this module only converts arrays and errors. libtitan.so is found when a Router is first made, never at
import time, so the rest of titan_client works without it (find_libtitan() says where it looks).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import subprocess
import sysconfig
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from .client import Reply, TitanError, TitanProtocolError, _BY_CODE

try:  # numpy is needed by Router.matmul only
    import numpy as np
except ImportError:  # pragma: no cover
    np = None  # type: ignore[assignment]

__all__ = ["Router", "RouteInfo", "BackendStatus", "TitanUnreachable", "TitanLibraryNotFound", "find_libtitan",
           "load_libtitan", "matmul_tolerance", "LIBRARY_ENV"]

LIBRARY_ENV = "TITAN_LIBRARY"
SONAME = "libtitan.so.0"  # the ABI this binding speaks; libtitan.so (the dev link) is taken as a fallback

_HOW_TO_GET = ("build and install libtitan from the titan repository (make && make install, i.e. meson install: "
               "it puts libtitan.so.0 and titan.pc under the prefix, /usr/local by default), or point "
               f"{LIBRARY_ENV} at a built one, e.g. {LIBRARY_ENV}=/path/to/titan/build/libtitan.so")


class TitanUnreachable(TitanError):
    """code "unreachable": no backend answered (timeouts, unreachable workers, breakers open, a local device
    that cannot open). The router's message names the last failure; Router.backends() shows each one's."""


class TitanLibraryNotFound(TitanError):
    """code "no_library": libtitan.so was not found or cannot be loaded; the message says where it looked
    and how to get it. Only Router and the functions of this module need libtitan."""


# ---- the C structs (include/titan/router.h); titan_router_struct_size guards their layout ----

_MAX_PARTS = 32


class _Part(ctypes.Structure):
    _fields_ = [("backend", ctypes.c_int), ("rows", ctypes.c_size_t)]


class _RouteInfo(ctypes.Structure):
    _fields_ = [("backend", ctypes.c_int), ("tried", ctypes.c_int), ("skipped_busy", ctypes.c_int),
                ("skipped_failed", ctypes.c_int), ("error", ctypes.c_char * 512), ("nparts", ctypes.c_int),
                ("part", _Part * _MAX_PARTS)]


class _BackendStatus(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * 64), ("type", ctypes.c_int), ("endpoint", ctypes.c_char * 256),
                ("device", ctypes.c_char * 64), ("capabilities", ctypes.c_char * 800), ("priority", ctypes.c_int),
                ("weight", ctypes.c_double), ("max_inflight", ctypes.c_int), ("timeout_ms", ctypes.c_int),
                ("state", ctypes.c_int), ("inflight", ctypes.c_int), ("requests", ctypes.c_uint64),
                ("ok", ctypes.c_uint64), ("busy", ctypes.c_uint64), ("failures", ctypes.c_uint64),
                ("probes", ctypes.c_uint64), ("p50_ms", ctypes.c_double), ("p99_ms", ctypes.c_double),
                ("gflops", ctypes.c_double), ("last_error", ctypes.c_char * 256), ("last_error_ms", ctypes.c_int64)]


class _Frame(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t)]


_DTYPE_CODE = {"float32": 1, "float64": 2}  # titan_dtype
_ROUTE_LOCAL = 1
_BREAKER = {0: "closed", 1: "open", 2: "half-open"}

# ---- finding and loading libtitan ----


def _multiarch_dirs() -> List[str]:
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = []
    for prefix in ("/usr/local", "/usr"):
        if arch:
            dirs.append(os.path.join(prefix, "lib", arch))
        dirs += [os.path.join(prefix, "lib64"), os.path.join(prefix, "lib")]
    return dirs


def _in_dir(d: str) -> Optional[str]:
    for name in (SONAME, "libtitan.so"):
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return p
    return None


def find_libtitan() -> Tuple[Optional[str], List[str]]:
    """Where libtitan.so would be loaded from: (path or soname, or None; what was tried, in order).

    1. $TITAN_LIBRARY: the library file, or a directory holding it (a build directory). When set, nothing
       else is tried: a setting that points nowhere is an error, not a reason to load another library.
    2. pkg-config: `pkg-config --variable=libdir titan` (titan.pc from `meson install`; PKG_CONFIG_PATH
       applies), then libtitan.so.0 in that directory.
    3. The install prefix: the dynamic linker's cache (ctypes.util.find_library, as after ldconfig), then
       lib directories under /usr/local and /usr (Meson's default prefix is /usr/local, and `meson install`
       does not always refresh the linker's cache)."""
    tried: List[str] = []
    env = os.environ.get(LIBRARY_ENV, "")
    if env:
        if os.path.isdir(env):
            found = _in_dir(env)
            tried.append(f"{LIBRARY_ENV}={env} (a directory{'' if found else ' without libtitan.so'})")
            return found, tried
        tried.append(f"{LIBRARY_ENV}={env}" + ("" if os.path.isfile(env) else " (no such file)"))
        return (env if os.path.isfile(env) else None), tried
    tried.append(f"{LIBRARY_ENV} (not set)")
    pkgconf = shutil.which("pkg-config")
    if pkgconf:
        try:
            p = subprocess.run([pkgconf, "--variable=libdir", "titan"], capture_output=True, text=True,
                               timeout=10)
            libdir = p.stdout.strip() if p.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            libdir = ""
        found = _in_dir(libdir) if libdir else None
        tried.append("pkg-config --variable=libdir titan" +
                     (f" ({libdir}{'' if found else ': no libtitan.so there'})" if libdir else " (no titan.pc)"))
        if found:
            return found, tried
    else:
        tried.append("pkg-config (not installed)")
    name = ctypes.util.find_library("titan")
    tried.append("the dynamic linker's cache" + (f" ({name})" if name else ""))
    if name:
        return name, tried
    for d in _multiarch_dirs():
        found = _in_dir(d)
        if found:
            tried.append(d)
            return found, tried
    tried.append(", ".join(_multiarch_dirs()))
    return None, tried


_lib_lock = threading.Lock()
_lib: Optional[Tuple[ctypes.CDLL, str]] = None


def _declare(lib: ctypes.CDLL) -> None:
    c, vp, sz = ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t
    info_p = ctypes.POINTER(_RouteInfo)
    sig = {
        "titan_router_new_from_file": (vp, [c, vp, c, sz]),
        "titan_router_new_from_string": (vp, [c, c, vp, c, sz]),
        "titan_router_destroy": (None, [ctypes.POINTER(vp)]),
        "titan_router_warnings": (c, [vp]),
        "titan_router_call": (ctypes.c_int, [vp, c, ctypes.POINTER(_Frame), sz, c, ctypes.POINTER(vp), info_p]),
        "titan_router_matmul": (ctypes.c_int, [vp, ctypes.c_int, sz, sz, sz, vp, vp, ctypes.POINTER(vp), info_p]),
        "titan_router_matmul_split": (ctypes.c_int,
                                      [vp, ctypes.c_int, sz, sz, sz, vp, vp, ctypes.POINTER(vp), info_p]),
        "titan_router_probe": (ctypes.c_int, [vp]),
        "titan_router_backend_count": (sz, [vp]),
        "titan_router_backend_status": (ctypes.c_int, [vp, sz, ctypes.POINTER(_BackendStatus)]),
        "titan_router_struct_size": (sz, [c]),
        "titan_reply_header": (c, [vp]),
        "titan_reply_frame_count": (sz, [vp]),
        "titan_reply_frame": (vp, [vp, sz, ctypes.POINTER(sz)]),
        "titan_reply_destroy": (None, [ctypes.POINTER(vp)]),
        "titan_matmul_tolerance": (ctypes.c_double, [ctypes.c_int, sz]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)  # AttributeError: an older libtitan (caught by the caller)
        fn.restype = res
        fn.argtypes = args


def load_libtitan() -> Tuple[ctypes.CDLL, str]:
    """Loads libtitan once (find_libtitan's order) and returns (the library, where it came from). Raises
    TitanLibraryNotFound saying where it looked and how to get libtitan, or that the one found does not fit
    this binding."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        path, tried = find_libtitan()
        if path is None:
            raise TitanLibraryNotFound("no_library", "libtitan.so was not found (tried: " + "; ".join(tried) +
                                       "). Router needs it: " + _HOW_TO_GET)
        try:
            lib = ctypes.CDLL(path, use_errno=True)
        except OSError as e:
            raise TitanLibraryNotFound("no_library", f"cannot load libtitan from {path}: {e}. {_HOW_TO_GET}") \
                from None
        try:
            _declare(lib)
        except AttributeError as e:
            raise TitanLibraryNotFound("no_library", f"{path} is not a libtitan this binding can use ({e}): "
                                       f"it is older than titan_client {_version()}. {_HOW_TO_GET}") from None
        for name, mirror in (("titan_route_info", _RouteInfo), ("titan_backend_status", _BackendStatus)):
            size = lib.titan_router_struct_size(name.encode())
            if size != ctypes.sizeof(mirror):
                raise TitanLibraryNotFound(
                    "no_library", f"{path} has another {name} layout ({size} bytes; titan_client "
                    f"{_version()} knows {ctypes.sizeof(mirror)}): use a libtitan and a titan_client from the "
                    f"same titan version. {_HOW_TO_GET}")
        _lib = (lib, path)
        return _lib


def _version() -> str:
    from . import __version__
    return __version__


def matmul_tolerance(dtype: Any, k: int) -> float:
    """libtitan's titan_matmul_tolerance: the relative error (to the largest |C| element) within which two
    results of one product from different code paths (another BLAS, kernel, thread count, a split) agree."""
    lib, _ = load_libtitan()
    name = np.dtype(dtype).name if np is not None else str(dtype)
    if name not in _DTYPE_CODE:
        raise ValueError(f"dtype must be float32 or float64, got {name}")
    return float(lib.titan_matmul_tolerance(_DTYPE_CODE[name], int(k)))


# ---- what the router reports ----


@dataclass(frozen=True)
class RouteInfo:
    """What one routed call did (titan_route_info).

    backend: the name of the backend that answered (None for a split, or when none did); tried: backends
    sent to or probed; skipped_busy: those that answered busy or were at max_inflight (overflow);
    skipped_failed: those that timed out, were unreachable, or whose breaker was open (failover); error: why
    the call failed ("" on success). split: the call was a split; parts: its (backend name, rows) in row
    order (a part's first backend; another may have taken it over). note: for a split that ran on one
    backend, which one and why the others took no rows."""

    backend: Optional[str]
    tried: int
    skipped_busy: int
    skipped_failed: int
    error: str
    split: bool = False
    parts: Tuple[Tuple[str, int], ...] = ()
    note: str = ""

    @property
    def overflowed(self) -> bool:
        """A backend was passed over because it was busy or full."""
        return self.skipped_busy > 0

    @property
    def failed_over(self) -> bool:
        """A backend was passed over because it failed or its breaker was open."""
        return self.skipped_failed > 0


@dataclass(frozen=True)
class BackendStatus:
    """One backend as the router sees it now (titan_backend_status).

    state: "up" (in rotation: breaker closed), "down" (out of rotation: its breaker is open, or half-open
    with its probe still to come), or "unknown" (closed, but nothing was sent to it or probed yet); reason:
    why it is down (its last error), else None. breaker: "closed", "open" or "half-open". inflight: calls
    in flight on it now (its load; `load` is that share of max_inflight). p50_ms/p99_ms: latency of its last
    128 answers (calls and probes), None before any. last_error_time: Unix time (s) of last_error, or None."""

    name: str
    type: str
    endpoint: str
    device: str
    capabilities: Tuple[str, ...]
    priority: int
    weight: float
    max_inflight: int
    timeout_ms: int
    breaker: str
    state: str
    reason: Optional[str]
    inflight: int
    requests: int
    ok: int
    busy: int
    failures: int
    probes: int
    p50_ms: Optional[float]
    p99_ms: Optional[float]
    gflops: float
    last_error: Optional[str]
    last_error_time: Optional[float]

    @property
    def load(self) -> Optional[float]:
        """inflight / max_inflight, or None when the backend has no max_inflight."""
        return self.inflight / self.max_inflight if self.max_inflight > 0 else None

    def offers(self, capability: str) -> bool:
        """Whether the router sends requests needing `capability` here (no list: everything)."""
        caps = self.capabilities
        return not caps or capability in caps or (capability == "inference" and "legacy_inference" in caps)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _status(s: _BackendStatus) -> BackendStatus:
    breaker = _BREAKER.get(s.state, "unknown")
    last_error = _text(s.last_error) or None
    if breaker != "closed":
        state, reason = "down", last_error or f"breaker {breaker}"
    elif s.requests == 0 and s.probes == 0:
        state, reason = "unknown", None
    else:
        state, reason = "up", None
    caps = _text(s.capabilities)
    return BackendStatus(
        name=_text(s.name), type="local" if s.type == _ROUTE_LOCAL else "remote", endpoint=_text(s.endpoint),
        device=_text(s.device), capabilities=tuple(c for c in caps.split(",") if c), priority=s.priority,
        weight=s.weight, max_inflight=s.max_inflight, timeout_ms=s.timeout_ms, breaker=breaker, state=state,
        reason=reason, inflight=s.inflight, requests=s.requests, ok=s.ok, busy=s.busy, failures=s.failures,
        probes=s.probes, p50_ms=s.p50_ms if s.p50_ms >= 0 else None, p99_ms=s.p99_ms if s.p99_ms >= 0 else None,
        gflops=s.gflops, last_error=last_error,
        last_error_time=s.last_error_ms / 1000 if s.last_error_ms else None)


# "NAME answered CODE: MESSAGE", as titan_router_matmul reports an error answer (a split adds "rows A..B: ")
_ANSWERED_RE = re.compile(r"^(?:rows \d+\.\.\d+: )?(?P<name>.*?) answered (?P<code>[A-Za-z0-9_]+): (?P<msg>.*)$",
                          re.S)


def _error(rc: int, info: RouteInfo) -> Exception:
    """The exception for a router call's -errno, carrying the route (.route)."""
    msg = info.error or os.strerror(-rc)
    e: Exception
    if rc == -errno.EREMOTEIO:
        m = _ANSWERED_RE.match(msg)
        code = m.group("code") if m else "remote"
        e = _BY_CODE.get(code, TitanError)(code, m.group("msg") if m else msg, None)
    elif rc == -errno.EBUSY:
        e = _BY_CODE["busy"]("busy", msg, None)
    elif rc == -errno.EHOSTUNREACH:
        e = TitanUnreachable("unreachable", msg, None)
    elif rc == -errno.ENOTSUP:
        e = _BY_CODE["unsupported"]("unsupported", msg, None)
    elif rc == -errno.EPROTO:
        e = TitanProtocolError("protocol", msg, None)
    elif rc == -errno.ENOMEM:
        e = MemoryError(msg)
    elif rc in (-errno.EINVAL, -errno.EOVERFLOW):
        e = ValueError(msg)
    else:
        e = TitanError("local", msg, None)
    e.route = info  # type: ignore[attr-defined]
    return e


def _config_error(path: str, err: bytes, e: int) -> Exception:
    msg = _text(err) or os.strerror(e)
    if e == errno.ENOENT:
        return FileNotFoundError(e, msg, path)
    if e == errno.EACCES:
        return PermissionError(e, msg, path)
    if e == errno.ENOMEM:
        return MemoryError(msg)
    return ValueError(msg)


# ---- the router ----


class Router:
    """libtitan's router over the backends of a compute_backends.yaml (docs/OPERATIONS.md, "Routing across
    backends"): each call goes to the first healthy backend, in priority order, that offers what it needs and
    has room; busy backends are overflowed, failing ones failed over, and a circuit breaker takes a backend
    that keeps failing out of rotation until a half-open ping lets it back. `type: local` backends compute in
    this process (libtitan's CPU backend).

    Thread-safe: calls from several threads run at once (ctypes releases the GIL during each libtitan
    call). close() waits for calls under way, then frees the router.

    Errors are titan_client's: an error answer raises its code's TitanError subclass (TitanBadRequest,
    TitanTooLarge...); every capable backend busy: TitanBusy; none answered: TitanUnreachable; no backend
    with the capability: TitanUnsupported; a malformed reply: TitanProtocolError. Each carries `.route`."""

    def __init__(self, handle: int, lib: ctypes.CDLL, library: str, source: str):
        """Use Router.from_file or Router.from_string."""
        self._lib = lib
        self._r: Optional[int] = handle
        #: where libtitan was loaded from
        self.library = library
        #: the configuration file (or the name given to from_string)
        self.source = source
        w = _text(lib.titan_router_warnings(handle) or b"")
        #: the configuration's warnings (unknown fields, which are ignored), one per entry
        self.warnings: List[str] = [x for x in w.split("\n") if x]
        s = _BackendStatus()
        self._backend_names: List[str] = []  # fixed for the router's life
        for i in range(lib.titan_router_backend_count(handle)):
            lib.titan_router_backend_status(handle, i, ctypes.byref(s))
            self._backend_names.append(_text(s.name))
        self._cv = threading.Condition()
        self._active = 0
        self._tls = threading.local()
        self._stats_lock = threading.Lock()
        self._counts: Dict[str, Any] = {"calls": 0, "matmuls": 0, "splits": 0, "ok": 0, "overflowed": 0,
                                        "failed_over": 0, "split_on_one_backend": 0, "errors": {},
                                        "answered_by": {}}

    @classmethod
    def from_file(cls, path: Union[str, "os.PathLike[str]"]) -> "Router":
        """Reads compute_backends.yaml at `path` (titan_router_new_from_file); no connection is made yet.
        Raises TitanLibraryNotFound without libtitan, FileNotFoundError/PermissionError, or ValueError for
        a bad file (the message names the file, the line and the field)."""
        lib, library = load_libtitan()
        p = os.fspath(path)
        err = ctypes.create_string_buffer(1024)
        h = lib.titan_router_new_from_file(os.fsencode(p), None, err, len(err))
        if not h:
            raise _config_error(p, err.value, ctypes.get_errno() or errno.EINVAL)
        return cls(h, lib, library, p)

    @classmethod
    def from_string(cls, yaml: str, name: str = "(string)") -> "Router":
        """The same from YAML text; `name` stands for the file in messages (relative key files are read from
        the current directory)."""
        lib, library = load_libtitan()
        err = ctypes.create_string_buffer(1024)
        h = lib.titan_router_new_from_string(yaml.encode("utf-8"), name.encode("utf-8"), None, err, len(err))
        if not h:
            raise _config_error(name, err.value, ctypes.get_errno() or errno.EINVAL)
        return cls(h, lib, library, name)

    # --- lifetime ---

    def close(self) -> None:
        """Waits for calls under way, then frees the router and its connections. Later calls raise
        TitanError("local")."""
        with self._cv:
            if self._r is None:
                return
            h, self._r = self._r, None
            while self._active:
                self._cv.wait()
        self._lib.titan_router_destroy(ctypes.byref(ctypes.c_void_p(h)))

    @property
    def closed(self) -> bool:
        return self._r is None

    def __enter__(self) -> "Router":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the real way
        try:
            if getattr(self, "_r", None) is not None and not self._active:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<titan_client.Router {self.source!r} {'closed' if self._r is None else 'open'}>"

    def _enter(self) -> int:
        with self._cv:
            if self._r is None:
                raise TitanError("local", "the router is closed")
            self._active += 1
            return self._r

    def _leave(self) -> None:
        with self._cv:
            self._active -= 1
            if not self._active:
                self._cv.notify_all()

    # --- what happened ---

    @property
    def last_route(self) -> Optional[RouteInfo]:
        """The RouteInfo of this thread's last call on this router (None before any)."""
        return getattr(self._tls, "route", None)

    def _route(self, ci: _RouteInfo, split: bool) -> RouteInfo:
        names = self._backend_names
        name = lambda i: names[i] if 0 <= i < len(names) else None  # noqa: E731
        parts = tuple((name(ci.part[p].backend) or "?", int(ci.part[p].rows))
                      for p in range(min(max(ci.nparts, 0), _MAX_PARTS)))
        return RouteInfo(backend=name(ci.backend), tried=ci.tried, skipped_busy=ci.skipped_busy,
                         skipped_failed=ci.skipped_failed, error=_text(ci.error), split=split, parts=parts)

    def _record(self, route: RouteInfo, err: Optional[Exception], kind: Optional[str]) -> None:
        self._tls.route = route
        with self._stats_lock:
            c = self._counts
            c["calls"] += 1
            if kind:
                c[kind] += 1
            c["overflowed"] += route.overflowed
            c["failed_over"] += route.failed_over
            if err is None:
                c["ok"] += 1
                for b in ([route.backend] if route.backend else [p[0] for p in route.parts]):
                    c["answered_by"][b] = c["answered_by"].get(b, 0) + 1
            else:
                code = getattr(err, "code", type(err).__name__)
                c["errors"][code] = c["errors"].get(code, 0) + 1
            if route.note:
                c["split_on_one_backend"] += 1

    def _one_backend_note(self, route: RouteInfo) -> str:
        """Why a split ran on one backend: the others that offer matrix_ops, and their states."""
        used = route.backend or (route.parts[0][0] if route.parts else None)
        others = [b for b in self.backends() if b.name != used and b.offers("matrix_ops")]
        if not others:
            why = "no other backend offers matrix_ops"
        else:
            why = "; ".join(f"{b.name} is {b.state}" + (f" ({b.reason})" if b.reason else "") for b in others)
        return f"split ran on one backend ({used}): {why}"

    # --- calls ---

    def matmul(self, a: "np.ndarray", b: "np.ndarray", split: bool = False) -> "np.ndarray":
        """C = A × B through the router (titan_router_matmul), or with split=True the rows of A divided among
        the healthy backends that offer matrix_ops in proportion to their measured throughput, computed at
        once and assembled (titan_router_matmul_split; split points fall on multiples of 64 rows).

        a and b: 2-D float32 or float64 arrays of one dtype with a.shape[1] == b.shape[0] (else ValueError);
        passed to libtitan C-contiguous in native byte order (a copy only when needed). Returns a new array of
        their dtype. last_route says where it went."""
        if np is None:  # pragma: no cover
            raise TitanError("local", "matmul needs numpy")
        a = _matrix(a, "a")
        b = _matrix(b, "b")
        if a.dtype != b.dtype:
            raise ValueError(f"matmul needs two float32 or two float64 arrays, got {a.dtype} and {b.dtype}")
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"inner dimensions do not match: {a.shape} x {b.shape}")
        (m, k), n = a.shape, b.shape[1]
        out = np.empty((m, n), dtype=a.dtype)
        ptr = ctypes.c_void_p(out.ctypes.data)
        ci = _RouteInfo()
        fn = self._lib.titan_router_matmul_split if split else self._lib.titan_router_matmul
        h = self._enter()
        try:
            rc = fn(h, _DTYPE_CODE[a.dtype.name], m, k, n, a.ctypes.data, b.ctypes.data, ctypes.byref(ptr),
                    ctypes.byref(ci))
            route = self._route(ci, split)
            if split and rc == 0 and len(route.parts) <= 1:
                route = RouteInfo(**{**route.__dict__, "note": self._one_backend_note(route)})
        finally:
            self._leave()
        err = _error(rc, route) if rc else None
        self._record(route, err, "splits" if split else "matmuls")
        if err is not None:
            raise err
        return out

    def request(self, header: Union[Dict[str, Any], str, bytes], frames: Iterable[Any] = (),
                capability: Optional[str] = None) -> Reply:
        """Routes any request (titan_router_call) and returns the answer, error answers included (as
        TitanClient.request). `capability`: what the backend must offer; None derives it from the op
        (matrix_ops for matrix_multiply, inference for inference, none for others). Raises TitanBusy,
        TitanUnreachable or TitanUnsupported when no backend could answer."""
        if isinstance(header, (str, bytes)):
            text = header.encode("utf-8") if isinstance(header, str) else header
        else:
            text = json.dumps(dict(header), separators=(",", ":"), allow_nan=True).encode("utf-8")
        keep: List[Any] = []
        frames = list(frames)
        cframes = (_Frame * max(1, len(frames)))()
        for i, f in enumerate(frames):
            data, size = _buffer(f, keep)
            cframes[i].data, cframes[i].size = data, size
        rep = ctypes.c_void_p()
        ci = _RouteInfo()
        h = self._enter()
        try:
            rc = self._lib.titan_router_call(h, text, cframes, len(frames),
                                             capability.encode() if capability else None, ctypes.byref(rep),
                                             ctypes.byref(ci))
            route = self._route(ci, False)
        finally:
            self._leave()
        err = _error(rc, route) if rc else None
        self._record(route, err, None)
        if err is not None:
            raise err
        try:
            head = json.loads(self._lib.titan_reply_header(rep) or b"{}")
            out = []
            size = ctypes.c_size_t()
            for i in range(self._lib.titan_reply_frame_count(rep)):
                p = self._lib.titan_reply_frame(rep, i, ctypes.byref(size))
                out.append(ctypes.string_at(p, size.value) if p else b"")
        finally:
            self._lib.titan_reply_destroy(ctypes.byref(rep))
        if not isinstance(head, dict):
            raise TitanProtocolError("protocol", "the routed reply is not a JSON object")
        return Reply(head, out)

    def call(self, header: Union[Dict[str, Any], str, bytes], frames: Iterable[Any] = (),
             capability: Optional[str] = None) -> Reply:
        """request(), then raises the matching TitanError for an error answer."""
        return self.request(header, frames, capability).raise_for_error()

    # --- state ---

    def probe(self) -> int:
        """Pings every backend at once (titan_router_probe: remote ones within their timeout, local ones by
        opening their device), updating states and latencies. Returns how many answered."""
        h = self._enter()
        try:
            return int(self._lib.titan_router_probe(h))
        finally:
            self._leave()

    def backends(self, probe: bool = False) -> List[BackendStatus]:
        """Every backend, in file order, as the router sees it now (BackendStatus). probe=True pings them all
        first (probe()); a backend that does not answer a probe is taken out of rotation at once, so it
        reads "down" with the reason."""
        h = self._enter()
        try:
            if probe:
                self._lib.titan_router_probe(h)
            out = []
            for i in range(self._lib.titan_router_backend_count(h)):
                s = _BackendStatus()
                if self._lib.titan_router_backend_status(h, i, ctypes.byref(s)) == 0:
                    out.append(_status(s))
            return out
        finally:
            self._leave()

    def stats(self) -> Dict[str, Any]:
        """Counters, as a dict: this Router's calls ("calls" in all, "matmuls", "splits", "ok", "errors" by
        code, "overflowed" and "failed_over": calls that passed over a busy or a failing backend,
        "split_on_one_backend", "answered_by": calls or split parts answered by each backend), and
        "backends": each backend's figures from libtitan (requests, ok, busy, failures, probes, inflight,
        p50_ms, p99_ms, gflops, breaker, state)."""
        with self._stats_lock:
            c = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._counts.items()}
        c["backends"] = {b.name: {"requests": b.requests, "ok": b.ok, "busy": b.busy, "failures": b.failures,
                                  "probes": b.probes, "inflight": b.inflight, "p50_ms": b.p50_ms,
                                  "p99_ms": b.p99_ms, "gflops": b.gflops, "breaker": b.breaker,
                                  "state": b.state}
                         for b in self.backends()}
        return c


def _matrix(x: Any, what: str) -> "np.ndarray":
    x = np.asarray(x)
    if x.dtype.kind != "f" or x.dtype.itemsize not in (4, 8):
        raise ValueError(f"{what} must be a float32 or float64 array, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got {x.ndim}-D")
    if 0 in x.shape:
        raise ValueError(f"{what} must not be empty, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))


def _buffer(f: Any, keep: List[Any]) -> Tuple[int, int]:
    """The address and size of a frame's bytes (kept alive in `keep` until the call returns)."""
    if isinstance(f, bytes):
        keep.append(f)
        return ctypes.cast(ctypes.c_char_p(f), ctypes.c_void_p).value or 0, len(f)
    mv = memoryview(f).cast("B")
    if mv.readonly or not mv.c_contiguous:
        b = mv.tobytes()
        keep.append(b)
        return ctypes.cast(ctypes.c_char_p(b), ctypes.c_void_p).value or 0, len(b)
    arr = (ctypes.c_char * mv.nbytes).from_buffer(mv)
    keep.append(arr)
    return ctypes.addressof(arr), mv.nbytes
