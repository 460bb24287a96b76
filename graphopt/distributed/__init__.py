"""Scale-out: `graphopt batch` (many models, one Ray task each) and `graphopt search`
(Optuna over a space of pipeline specs, trials built in parallel on Ray and timed one at a
time per node). Sits on top of the driver like the CLI: imports graphopt.api, pipeline and
analysis; nothing in the core imports it. Ray and Optuna come with the `distributed` extra.
"""

from .batch import BatchResult, run_batch
from .search import SearchResult, load_metric, run_search
from .space import Space, parse_space

__all__ = ["BatchResult", "SearchResult", "Space", "load_metric", "parse_space", "run_batch", "run_search"]
