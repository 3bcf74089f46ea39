"""Training-time mixed-precision search: AutoQNN (QSS, QPL) and SSPS, then QAT.

* :mod:`bitsmith.search.supernet` - :class:`SupernetSpace`, :func:`build_supernet`.
* :mod:`bitsmith.search.methods` - :class:`QSS`, :class:`QPL`, :class:`SSPS`.
* :mod:`bitsmith.search.derive` - :func:`derive_policy` (budget met exactly, ILP repair).
* :mod:`bitsmith.search.qat` - :func:`build_qat_model`; :mod:`bitsmith.trained` -
  :func:`save_result`, :func:`load_result`.
* :mod:`bitsmith.search.pipeline` - :func:`search` (the producer contract), :class:`SearchConfig`.
* :mod:`bitsmith.search.warmstart` - :func:`ilp_warm_start` (sensitivity + ILP start policy).
* :mod:`bitsmith.search.baseline` - :func:`uniform_within_budget` (the uniform policy to beat).

See ``docs/search.md``.
"""

from bitsmith.search.baseline import uniform_within_budget
from bitsmith.search.derive import Derivation, derive_policy
from bitsmith.search.methods import QPL, QSS, SSPS, SearchMethod, make_method
from bitsmith.search.pipeline import SearchConfig, SearchOutcome, search
from bitsmith.search.qat import build_qat_model
from bitsmith.search.supernet import Supernet, SupernetSpace, SupernetSpaceError, build_supernet
from bitsmith.search.warmstart import ilp_warm_start
from bitsmith.trained import load_result, save_result

__all__ = [
    "QPL", "QSS", "SSPS", "Derivation", "SearchMethod", "SearchConfig", "SearchOutcome",
    "SupernetSpace", "SupernetSpaceError", "Supernet", "build_qat_model", "build_supernet",
    "derive_policy", "ilp_warm_start", "load_result", "make_method", "save_result", "search",
    "uniform_within_budget",
]
