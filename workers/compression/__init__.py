"""Model compression methods behind one registry: `compress(model, method, args, calib)`.

Importing prune and quant here is what registers their methods.
"""
from workers.compression.base import (
    COMPRESSIONS,
    CompressionReport,
    compress,
    data_dependent,
    measure_sparsity,
)
from workers.compression import files, prune, quant, structured  # noqa: F401  (registration side effects)

__all__ = ["COMPRESSIONS", "CompressionReport", "compress", "data_dependent", "measure_sparsity"]
