"""Batched Stochastic MuZero search (ARCHITECTURE.md §5).

``run_search`` searches B roots at once in preallocated tensors (tree.py: layout;
selection.py: the selection rules; search.py: simulate = traverse, expand, back up).
``run_search_single`` is the plain one-tree-at-a-time reference (reference.py), and
``bench_search`` (bench.py) measures one against the other and against the bare
network calls.
"""

from shared.search.reference import run_search_single
from shared.search.search import RootNoise, SearchConfig, SearchModel, SearchOutput, draw_root_noise, run_search
from shared.search.tree import Tree

__all__ = [
    "RootNoise",
    "SearchConfig",
    "SearchModel",
    "SearchOutput",
    "Tree",
    "draw_root_noise",
    "run_search",
    "run_search_single",
]
