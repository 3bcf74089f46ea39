"""The per-layer choice space that sensitivity analysis and bit allocation work over.

A :class:`CandidateSpace` pairs a model's :class:`~bitsmith.graph.LayerTable`
with, for each *decided* layer, an ordered tuple of candidate
:class:`~bitsmith.policy.LayerSpec`. Sensitivity scores, cost tables and the
integer program all index choices as ``(layer name, position in that tuple)``.
Layers of the table that are not in the space are *fixed*: they keep the spec
of a base policy (or float) and only add a constant to every cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from bitsmith.graph.layer_table import LayerTable
from bitsmith.policy import LayerSpec, PolicyError, QSpec

DEFAULT_BITS = (2, 3, 4, 5, 6, 8)


class CandidateSpace(Mapping[str, tuple[LayerSpec, ...]]):
    """Ordered mapping ``layer name -> tuple of candidate LayerSpecs`` over a LayerTable.

    Args:
        table: the model's LayerTable (from :func:`bitsmith.prepare`).
        choices: ``name -> candidates`` for the decided layers, in any order
            (stored in the table's execution order). Every name must be a
            layer of ``table``; every candidate tuple must be non-empty and
            free of duplicates.
    """

    def __init__(self, table: LayerTable, choices: Mapping[str, Sequence[LayerSpec]]) -> None:
        unknown = [n for n in choices if n not in table]
        if unknown:
            raise PolicyError(f"candidate layers not in the model's LayerTable: {unknown[:5]}; "
                              f"layers are {table.names[:8]}")
        ordered: dict[str, tuple[LayerSpec, ...]] = {}
        for name in table.names:
            if name not in choices:
                continue
            specs = tuple(choices[name])
            if not specs:
                raise PolicyError(f"{name}: the candidate list is empty")
            for spec in specs:
                if not isinstance(spec, LayerSpec):
                    raise PolicyError(f"{name}: candidates must be LayerSpecs, got {spec!r}")
            if len(set(specs)) != len(specs):
                raise PolicyError(f"{name}: the candidate list has duplicates")
            ordered[name] = specs
        if not ordered:
            raise PolicyError("the candidate space has no layer to decide")
        self.table = table
        self._choices = ordered

    def __getitem__(self, name: str) -> tuple[LayerSpec, ...]:
        return self._choices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._choices)

    def __len__(self) -> int:
        return len(self._choices)

    @property
    def names(self) -> list[str]:
        """Decided layers in execution order."""
        return list(self._choices)

    @property
    def fixed(self) -> list[str]:
        """Layers of the table that the space does not decide."""
        return [n for n in self.table.names if n not in self._choices]

    @property
    def size(self) -> int:
        """Number of (layer, choice) pairs."""
        return sum(len(c) for c in self._choices.values())

    def pairs(self) -> Iterator[tuple[str, int, LayerSpec]]:
        """Every ``(layer, choice index, spec)`` in order."""
        for name, specs in self._choices.items():
            for i, spec in enumerate(specs):
                yield name, i, spec

    def labels(self, name: str) -> list[str]:
        """Short labels of a layer's candidates, e.g. ``["W2A8", "W4A8"]`` (``f`` = float)."""
        return [choice_label(s) for s in self._choices[name]]

    def to_dict(self) -> dict[str, list[dict]]:
        """``name -> [LayerSpec.to_dict(), ...]`` (JSON-ready)."""
        return {n: [s.to_dict() for s in specs] for n, specs in self._choices.items()}

    @classmethod
    def from_dict(cls, table: LayerTable, data: Mapping[str, Sequence[Mapping]]) -> CandidateSpace:
        return cls(table, {n: [LayerSpec.from_dict(s, n) for s in specs]
                           for n, specs in data.items()})


def choice_label(spec: LayerSpec) -> str:
    """``"W4A8"`` style label; ``f`` marks a float tensor, ``s0.50`` a sparsity."""
    w = "f" if spec.weight is None else str(spec.weight.bits)
    a = "f" if spec.act is None else str(spec.act.bits)
    sparse = f"s{spec.sparsity:.2f}" if spec.sparsity else ""
    return f"W{w}A{a}{sparse}"


def bit_candidates(
    table: LayerTable,
    weight: QSpec = QSpec("uniform_symmetric", 4, "channel"),
    bits: Iterable[int] = DEFAULT_BITS,
    act: QSpec | None = QSpec("uniform_asymmetric", 8),
    layers: Iterable[str] | None = None,
    act_bits: Iterable[int] | None = None,
) -> CandidateSpace:
    """The usual space: the ``weight`` template at each of ``bits`` for every layer.

    Args:
        table: the model's LayerTable.
        weight: template weight QSpec (its ``bits`` is replaced by each of ``bits``).
        bits: candidate weight bit widths (sorted ascending in the result).
        act: the input-activation QSpec of every candidate (``None`` = float).
        layers: the layers to decide (default: all layers of the table).
        act_bits: also choose the activation bit width from these (product with
            ``bits``); ``None`` keeps ``act`` fixed.

    Raises:
        PolicyError: a bit width the scheme does not support (names the layer).
    """
    wbits = sorted(set(bits))
    if not wbits:
        raise PolicyError("bit_candidates needs at least one weight bit width")
    abits: list[int | None] = ([None] if act_bits is None or act is None
                               else list(sorted(set(act_bits))))
    names = table.names if layers is None else list(layers)
    specs = []
    for b in wbits:
        for ab in abits:
            a = act if ab is None or act is None else act.replace(bits=ab)
            specs.append(LayerSpec(weight=weight.replace(bits=b), act=a))
    return CandidateSpace(table, {n: specs for n in names})
