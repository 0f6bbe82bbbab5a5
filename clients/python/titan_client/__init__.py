"""titan_client - a Python client for titan-worker over ZeroMQ (docs/PROTOCOL.md, protocol 1).

    from titan_client import TitanClient
    with TitanClient("tcp://127.0.0.1:5555") as c:
        print(c.ping()["gpu"])
        print(c.matrix_multiply([[1, 2], [3, 4]], [[5], [6]]))   # [[17.0], [39.0]]
"""
from .client import (Reply, TitanBadRequest, TitanBusy, TitanClient, TitanDeadline, TitanError,
                     TitanProtocolError, TitanShuttingDown, TitanTimeout, TitanTooLarge, TitanUnauthorized,
                     TitanUnknownOp, TitanUnsupported)

__version__ = "0.1.0"
PROTOCOL = 1

__all__ = ["Reply", "TitanClient", "TitanError", "TitanBusy", "TitanTimeout", "TitanDeadline", "TitanBadRequest",
           "TitanUnknownOp", "TitanUnsupported", "TitanTooLarge", "TitanShuttingDown", "TitanUnauthorized",
           "TitanProtocolError", "__version__", "PROTOCOL"]
