import os

import torch

# Triton kernels run under the interpreter on CPU tensors; it must be set before any kernel
# is defined, i.e. before the first import of models.ops.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
