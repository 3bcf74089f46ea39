"""``bitsmith.autoquantize``: one call on top of the producers, the same result shape.

``method="auto"`` (the default) is post-training and needs no training data:

1. per-layer sensitivity with the empirical Fisher on up to 512 labelled validation
   examples (rank correlation 0.994 with the measured output KL on ResNet-20 at a sixth of
   its cost, ``benchmarks/results/sensitivity_resnet20.md``; without labelled validation
   data, no warm start);
2. the 0-1 integer program allocates per-layer weight bits (2-8, per-channel symmetric,
   8-bit activations) under the budget (without one: at 3, 4 and 6 average bits); those
   allocations and the dearest uniform policy within the budget are the warm starts;
3. a short tune (XGBoost cost model, ``trials`` trials, per-layer bits, clipping and bias
   correction searched) from those warm starts; its rule picks the result on the
   validation data.

On ResNet-20 (``benchmarks/results/ilp_vs_tune.md``) the warm-started tuner beat a cold
tuner at equal trials by 2.2 (4-bit) and 8.0 (3-bit) test points and landed within 0.5 test
points of the best integer-program allocation with bias correction; that benchmark selected
on a memorised validation set, so its choice among near-equal policies is noise.

With a budget (size in bytes, BitOPs, or average weight bits, converted to the size of
that width) the tuner maximises the validation score within it; without one it minimises
size within ``tolerance`` points. ``rounding`` (``nearest``, or a learned rounding:
``adaround``, ``brecq``, ``qdrop``, see ``docs/reconstruction.md``) is given to every
policy the post-training methods evaluate; with ``ilp`` the measured sensitivities are
then taken after reconstruction. Learned rounding costs minutes per evaluated policy.
Other methods: ``"tune"`` (the tuner alone), ``"ilp"``
(sensitivity + integer program, :func:`bitsmith.analyze.analyze`), and the training
producers ``"search"`` and ``"compress"`` (they need ``train_data``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from torch import nn

from bitsmith.cost import Budget
from bitsmith.errors import InputError
from bitsmith.policy import ROUNDING_METHODS, Rounding
from bitsmith.result import QuantizationResult
from bitsmith.scoring import EvaluateFn

METHODS = ("auto", "tune", "ilp", "search", "compress")
AUTO_BITS = (2, 3, 4, 5, 6, 8)


def autoquantize(model: nn.Module, calibration: Any, validation: Any = None, *,
                 budget: Budget | None = None, tolerance: float = 1.0, method: str = "auto",
                 evaluate: EvaluateFn | None = None, out_dir: str | Path | None = None,
                 trials: int = 24, train_data: Any = None, progress: bool = False,
                 rounding: str | Rounding = "nearest") -> QuantizationResult:
    """Quantize ``model`` with mixed precision: the policy, the quantized model, the numbers.

    Args:
        model: the trained float model (not modified).
        calibration: calibration inputs (a ``DataLoader``, a dataset, ``(inputs, labels)`` or
            an input tensor).
        validation: labelled validation data the choice is made on (never the test set).
        budget: a :class:`~bitsmith.cost.Budget` (``size_bytes``, ``bitops`` or
            ``avg_weight_bits``); ``None``: smallest within ``tolerance``.
        tolerance: allowed drop of the validation score in points (without a budget).
        method: ``auto``, ``tune``, ``ilp``, ``search`` or ``compress`` (module docstring).
        evaluate: ``evaluate(model) -> float``, higher is better (default top-1 %).
        out_dir: the run directory (``bitsmith report OUT_DIR``).
        trials: tuner trials (``auto`` and ``tune``).
        train_data: labelled training batches (``search``, ``compress``).
        progress: show progress.
        rounding: ``nearest`` or a learned rounding method (``auto``, ``tune``, ``ilp``):
            its name (1,000 reconstruction steps per layer or block) or a
            :class:`~bitsmith.policy.Rounding` (its method and ``iterations``).

    Returns:
        :class:`~bitsmith.result.QuantizationResult` (``.policy``, ``.model``,
        ``.summary``, ``.run_dir``).
    """
    if method not in METHODS:
        raise InputError(f"method {method!r} is unknown; use one of {', '.join(METHODS)}")
    if budget is not None and budget.latency is not None:
        raise InputError("autoquantize: a latency budget needs a latency table; use "
                         "bitsmith.search.search with SearchConfig(latency_table=...)")
    rounding, rounding_iterations = ((rounding.method, rounding.iterations)
                                     if isinstance(rounding, Rounding) else (rounding, 1000))
    if rounding not in ROUNDING_METHODS:
        raise InputError(f"rounding {rounding!r} is unknown; use one of "
                         f"{', '.join(ROUNDING_METHODS)}")
    if method in ("search", "compress"):
        if rounding != "nearest":
            raise InputError(f"method {method!r} trains its weights; rounding="
                             f"{rounding!r} applies to the post-training methods only")
        return _training(model, calibration, validation, budget, method, evaluate, out_dir,
                         train_data, progress)
    if method == "ilp":
        from bitsmith.analyze import AnalyzeConfig, analyze

        cfg = AnalyzeConfig(methods=("fisher",), budget=budget or Budget(avg_weight_bits=4.0),
                            avg_bits=(), progress=progress,
                            rounding=cast(Any, rounding),  # checked above
                            rounding_iterations=rounding_iterations)
        return analyze(model, calibration, validation, evaluate=evaluate, config=cfg,
                       out_dir=out_dir)
    return _tune(model, calibration, validation, budget, tolerance, method, evaluate,
                 out_dir, trials, progress, (rounding, rounding_iterations))


def _tune(model: nn.Module, calibration: Any, validation: Any, budget: Budget | None,
          tolerance: float, method: str, evaluate: EvaluateFn | None,
          out_dir: str | Path | None, trials: int, progress: bool,
          rounding: tuple[str, int] = ("nearest", 1000)) -> QuantizationResult:
    from bitsmith.tune import TuneConfig, TuneSpace, tune

    space = TuneSpace.mixed_precision(weight_bits=AUTO_BITS).to_dict()
    space.update(bias_correction=[False, True], calib_size=[min(1000, _count(calibration))],
                 rounding=[rounding[0]], rounding_iterations=rounding[1])
    objective: dict[str, Any] = {"objective": "min_cost", "tolerance": tolerance}
    warm: list[Any] = []
    if budget is not None:
        limit, metric = _tune_budget(model, calibration, budget)
        objective = {"objective": "max_accuracy", "metric": metric, "budget": limit}
    if method == "auto":
        from bitsmith.progress import stage

        with stage("autoquantize: Fisher sensitivity and integer-program warm starts",
                   progress):
            warm = _warm_starts(model, calibration, validation, budget)
    cfg = TuneConfig(space=space, n_trials=trials, init_policies=tuple(warm),
                     progress=progress, **objective)
    result = tune(model, calibration, validation, evaluate=evaluate, config=cfg,
                  out_dir=out_dir)
    result.summary.update(method=method, warm_starts=len(warm))
    return result


def _count(data: Any) -> int:
    from bitsmith.scoring import count_examples

    n = count_examples(data)
    if n is None:
        raise InputError("autoquantize: calibration data must have a length (a dataset, a "
                         "DataLoader over one, or a tensor)")
    return n


def _table(model: nn.Module, calibration: Any) -> Any:
    from bitsmith.quantize import iter_batches, prepare

    _, table, _ = prepare(model, next(iter_batches(calibration, 1)))
    return table


def _space(table: Any) -> Any:
    from bitsmith.allocation import bit_candidates
    from bitsmith.policy import QSpec

    return bit_candidates(table, QSpec("uniform_symmetric", 4, "channel"), AUTO_BITS,
                          QSpec("uniform_asymmetric", 8))


def _tune_budget(model: nn.Module, calibration: Any, budget: Budget) -> tuple[float, str]:
    """The tuner's (limit, metric) of a Budget: size or BitOPs (average bits -> the size of
    the uniform policy at that width)."""
    kinds = [k for k, _ in budget.items()]
    if kinds == ["bitops"]:
        return float(budget.bitops), "bitops"  # type: ignore[arg-type]
    if kinds == ["size_bytes"]:
        return float(budget.size_bytes), "size"  # type: ignore[arg-type]
    if kinds == ["avg_weight_bits"]:
        from bitsmith.allocation import size_budget

        return float(size_budget(_space(_table(model, calibration)),
                                 float(budget.avg_weight_bits))), "size"  # type: ignore[arg-type]
    raise InputError(f"autoquantize takes one budget (size_bytes, bitops or avg_weight_bits), "
                     f"got {budget.describe()}")


def _warm_starts(model: nn.Module, calibration: Any, validation: Any,
                 budget: Budget | None) -> list[Any]:
    """The integer program's allocations (Fisher scores) under the budget - or at 3, 4 and 6
    average bits without one, so that the smallest-within-tolerance search starts from
    small policies too - and the dearest uniform policy within the budget."""
    from bitsmith.allocation import allocate, size_budget
    from bitsmith.cost import estimate, within_budget
    from bitsmith.policy import Policy
    from bitsmith.scoring import as_batches
    from bitsmith.sensitivity import estimate_fisher

    if validation is None:  # no labelled data for the Fisher scores: a cold start
        return []
    table = _table(model, calibration)
    space = _space(table)
    sens = estimate_fisher(model, space, as_batches(validation), max_examples=512)
    budgets = [budget] if budget is not None else [
        Budget(size_bytes=size_budget(space, b)) for b in (3.0, 4.0, 6.0)]
    warm: list[Any] = [allocate(space, sens, b).policy for b in budgets]
    for bits in sorted(AUTO_BITS, reverse=True):
        uniform = Policy({n: space[n][AUTO_BITS.index(bits)] for n in space})
        if budget is None or within_budget(estimate(table, uniform), budget):
            warm.append(uniform)
            break
    return warm


def _training(model: nn.Module, calibration: Any, validation: Any, budget: Budget | None,
              method: str, evaluate: EvaluateFn | None, out_dir: str | Path | None,
              train_data: Any, progress: bool) -> QuantizationResult:
    if train_data is None:
        raise InputError(f"method {method!r} trains: give train_data (labelled batches)")
    if method == "search":
        from bitsmith.search import SearchConfig, search
        from bitsmith.training import TrainConfig

        train = TrainConfig(epochs=1, lr=2e-4, weight_decay=0.0, grad_clip=10.0,
                            progress=progress)
        searched = SearchConfig(budget=budget or Budget(avg_weight_bits=4.0), search=train,
                                qat=train.replace(distill_weight=0.7))
        return search(model, calibration, validation, evaluate=evaluate, config=searched,
                      out_dir=out_dir, train_data=train_data)
    from bitsmith.compress import CompressConfig, compress
    from bitsmith.training import TrainConfig

    size = None if budget is None else budget.size_bytes
    cfg = CompressConfig(budget_bytes=size, train=TrainConfig(
        epochs=1, lr=2e-4, optimizer="adamw", weight_decay=0.0, distill_weight=0.9,
        grad_clip=5.0, progress=progress))
    return compress(model, calibration, validation, evaluate=evaluate, config=cfg,
                    out_dir=out_dir, train_data=train_data)
