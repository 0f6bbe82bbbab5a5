"""titan_client - a Python client for titan-worker over ZeroMQ (docs/PROTOCOL.md, protocol 1).

    from titan_client import TitanClient
    with TitanClient("tcp://127.0.0.1:5555") as c:
        print(c.ping()["gpu"])
        print(c.matrix_multiply([[1, 2], [3, 4]], [[5], [6]]))   # [[17.0], [39.0]]

Resident tensors stay in the worker's memory between calls (PROTOCOL.md §5.7):

    with TitanClient("tcp://127.0.0.1:5555", identity="job-42") as c:
        a = c.tensor_put(np.ones((512, 512), np.float32))        # a handle, "t-..."
        ab = c.matmul(a, a, keep=True)                           # the product stays there too
        print(c.tensor_get(ab)[0, 0])                            # 512.0
        c.tensor_free_all()

Encoder models served by `titan-worker --models DIR` (PROTOCOL.md §5.8):

    with TitanClient("tcp://127.0.0.1:5555") as c:
        e = c.embed("all-MiniLM-L6-v2", ["a cat", "a dog"])     # float32 array [2, 384]
        r = c.rerank("ms-marco-MiniLM-L-6-v2", "what is a cat", ["a cat is a feline", "stocks fell"])
        print(r[0].index, r[0].relevance_score, r.scores)        # best first; numpy arrays too

Routing across the backends of a compute_backends.yaml goes through libtitan's own router (a ctypes
binding; libtitan is loaded when the first Router is made, so everything else works without it):

    from titan_client import Router
    with Router.from_file("compute_backends.yaml") as r:
        c = r.matmul(a, b)                   # overflow, failover and the circuit breaker as in C
        c = r.matmul(a, b, split=True)       # the rows divided among the healthy backends
        print([(b.name, b.state, b.reason) for b in r.backends(probe=True)])
"""
from .client import (Ranking, RerankResult, Reply, TitanBadRequest, TitanBusy, TitanClient, TitanDeadline, TitanError, TitanNotFound,
                     TitanProtocolError, TitanQuotaExceeded, TitanShuttingDown, TitanTimeout, TitanTooLarge,
                     TitanUnauthorized, TitanUnknownOp, TitanUnsupported)
from .router import (BackendStatus, RouteInfo, Router, TitanLibraryNotFound, TitanUnreachable, find_libtitan,
                     matmul_tolerance)

__version__ = "0.1.0"
PROTOCOL = 1

__all__ = ["Reply", "RerankResult", "Ranking", "TitanClient", "TitanError", "TitanBusy", "TitanTimeout", "TitanDeadline", "TitanBadRequest",
           "TitanUnknownOp", "TitanUnsupported", "TitanTooLarge", "TitanShuttingDown", "TitanUnauthorized",
           "TitanQuotaExceeded", "TitanNotFound", "TitanProtocolError", "Router", "RouteInfo", "BackendStatus",
           "TitanUnreachable", "TitanLibraryNotFound", "find_libtitan", "matmul_tolerance", "__version__", "PROTOCOL"]
