"""Search the shrunk space for the best architecture under each budget (NAS-BERT, section 3.3).

:class:`Objective` is a pure function of an architecture (proxy loss, predicted latency, params, FLOPs);
:func:`run_search` drives it with Optuna in this process, :func:`nasbert.search.ray_search.run_ray_search` with
Optuna workers on Ray (imported lazily, so Ray is needed only there), both in one shared study
(:mod:`nasbert.search.study`).
"""

from __future__ import annotations

from ..budgets import DEFAULT_BUDGETS, Budget, parse_budget, parse_budgets
from .objective import Evaluation, Objective, load_block_losses
from .optuna_search import SAMPLERS, Candidate, SearchError, SearchResult, TrialRecord, load_pareto, pareto_front, \
    run_search

__all__ = ["DEFAULT_BUDGETS", "SAMPLERS", "Budget", "Candidate", "Evaluation", "Objective", "SearchError",
           "SearchResult", "TrialRecord", "load_block_losses", "load_pareto", "pareto_front", "parse_budget",
           "parse_budgets", "run_ray_search", "run_search"]


def run_ray_search(*args, **kwargs):
    """See :func:`nasbert.search.ray_search.run_ray_search` (imports Ray on first use)."""
    from .ray_search import run_ray_search as run

    return run(*args, **kwargs)
