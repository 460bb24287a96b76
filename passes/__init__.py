"""The built-in passes, installed as `graphopt.passes`.

Each module holds one family of passes and registers them (and its group) by name
when imported; importing this package registers them all. Modules import heavy
dependencies lazily, inside the passes that need them.
"""

from . import cleanup  # noqa: F401
from . import fusion  # noqa: F401
from . import fp16  # noqa: F401
from . import nchwc  # noqa: F401
from . import prune  # noqa: F401
from . import quantize  # noqa: F401
from . import bind_shapes  # noqa: F401
# --- distill/sparsify (issue 15)
from . import distill  # noqa: F401
from . import sparsify  # noqa: F401
# --- end distill/sparsify
