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
"""
from .client import (Reply, TitanBadRequest, TitanBusy, TitanClient, TitanDeadline, TitanError, TitanNotFound,
                     TitanProtocolError, TitanQuotaExceeded, TitanShuttingDown, TitanTimeout, TitanTooLarge,
                     TitanUnauthorized, TitanUnknownOp, TitanUnsupported)

__version__ = "0.1.0"
PROTOCOL = 1

__all__ = ["Reply", "TitanClient", "TitanError", "TitanBusy", "TitanTimeout", "TitanDeadline", "TitanBadRequest",
           "TitanUnknownOp", "TitanUnsupported", "TitanTooLarge", "TitanShuttingDown", "TitanUnauthorized",
           "TitanQuotaExceeded", "TitanNotFound", "TitanProtocolError", "__version__", "PROTOCOL"]
