"""What a store's recorded spec says about its networks: one meaning of "given", "one network" and "ReLU".

A store records the spec it was made from (its ``spec`` attribute, :meth:`pipeline.spec.Spec.to_dict`).
The fit, the report and the linear answer ask the same questions of it, and answer them here only,
through the spec's own notion of the init (:attr:`pipeline.spec.NetworkSpec.init_kind`):

- ``given``: the networks were read from files (one file, or a path template), not drawn at random;
- ``one_per_cell``: every (L, m) holds one network (a single file, or one seed), so its noise draws,
  not networks, are the independent units of the statistics;
- ``theory_applies``: the random-network theory (first order, arc-cosine attenuation, the finite-width
  spread, the He-init looseness of the bound) is about random ReLU networks; it is shown only for them.

>>> n = Networks.from_spec({"network": {"init": "he"}, "grid": {"seeds": [0, 1]}})
>>> n.given, n.one_per_cell, n.theory_applies
(False, False, True)
>>> n = Networks.from_spec({"network": {"init": "he", "activation": "tanh"}, "grid": {"seeds": [0, 1]}})
>>> n.theory_applies, n.why_no_theory
(False, 'the random-network theory applies to random ReLU networks only, and these networks use tanh')
>>> n = Networks.from_spec({"network": {"init": "/m/net.onnx", "activation": None, "read": [
...     {"widths": [64, 256, 64, 10], "activations": ["gelu", "gelu"]}]}, "grid": {"seeds": [0]}})
>>> n.one_per_cell, n.activations, n.uniform, n.widths_text()
(True, ('gelu',), False, '64-256-64-10')
"""

from __future__ import annotations

import dataclasses

from ..spec import NetworkSpec

RELU = "relu"
ONLY_RELU = "the random-network theory applies to random ReLU networks only"


@dataclasses.dataclass(frozen=True)
class Networks:
    """The networks of a store, as its recorded spec describes them."""

    kind: str  # "random", "file" (one network for the whole grid) or "template" (one file per cell)
    seeds: int  # networks per (L, m) in the grid
    activations: tuple[str, ...]  # every hidden-layer activation of the store's networks, each name once
    widths: tuple[tuple[int, ...], ...] = ()  # n_0 .. n_L of each network file read (none for random networks)

    @classmethod
    def from_spec(cls, spec: dict) -> Networks:
        """From a recorded spec (a plain dict, as :func:`json.loads` gives it).

        The activations of network files are those the store recorded for each file read
        (``network.read``: from the file, or the spec); otherwise ``network.activation``, a name or
        one per hidden layer. A spec without either (made before activations were a field) means ReLU.
        """
        net = spec["network"]
        kind = NetworkSpec(init=net["init"]).init_kind  # the spec's own notion, never a copy of it
        read = net.get("read") or []
        if read:
            names = [a for r in read for a in r["activations"]]
        else:
            activation = net.get("activation") or RELU
            names = list(activation) if isinstance(activation, (list, tuple)) else [activation]
        widths = tuple(tuple(r["widths"]) for r in read)
        return cls(kind, len(spec["grid"]["seeds"]), tuple(dict.fromkeys(names)) or (RELU,), widths)

    @property
    def uniform(self) -> bool:
        """Whether every hidden layer of every network file has one width (random networks always do)."""
        return all(len(set(w[1:-1])) <= 1 for w in self.widths)

    def widths_text(self) -> str:
        """The distinct widths n_0-..-n_L of the network files, e.g. ``64-256-64-10``."""
        return ", ".join(dict.fromkeys("-".join(map(str, w)) for w in self.widths))

    @property
    def given(self) -> bool:
        """Read from files (trained networks, as their users hold them), not drawn at random."""
        return self.kind != "random"

    @property
    def one_per_cell(self) -> bool:
        """One network per (L, m): a single network file (the spec allows one seed with it), or one seed."""
        return self.kind == "file" or self.seeds == 1

    @property
    def units(self) -> str:
        """What the statistics resample and count: ``networks``, or the ``draws`` of one network."""
        return "draws" if self.one_per_cell else "networks"

    @property
    def relu(self) -> bool:
        return all(a == RELU for a in self.activations)

    @property
    def theory_applies(self) -> bool:
        """Whether the random-network theory describes these networks: random ReLU networks only."""
        return not self.given and self.relu

    @property
    def why_no_theory(self) -> str:
        """Why the theory is not shown ("" when it applies), as a phrase for a sentence."""
        if self.given:
            return f"{ONLY_RELU}, and these networks were read from files"
        if not self.relu:
            names = ", ".join(dict.fromkeys(a for a in self.activations if a != RELU))
            return f"{ONLY_RELU}, and these networks use {names}"
        return ""


def label(value) -> str:
    """A coordinate value as it is printed: the ``m`` of a given network is a label for its widths."""
    value = value.item() if hasattr(value, "item") else value
    return str(value)
