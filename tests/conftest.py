import os

import pytest
import torch

# Triton kernels run under the interpreter on CPU tensors; it must be set before any kernel
# is defined, i.e. before the first import of models.ops.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """One moto S3 server for the whole session, its endpoint and keys in this process's
    environment (s3fs caches a file system per endpoint, so a server per module would leave
    cached clients pointing at a stopped one)."""
    from servers import S3Server

    server = S3Server(tmp_path_factory.mktemp("moto"))
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
