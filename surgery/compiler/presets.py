"""Recipe presets: the one table of what ``tost``, ``tost-official``, ``none`` and Table 4's single
tweaks train. ``surgery train / run / demo / sweep``, ``recipe:`` in a config and ``surgery.ToST``
read it.

A preset is the config fields it sets, by dotted name; ``recipe`` holds the graph passes. Naming a
preset sets those fields first, and what a config writes beside it wins field by field (``recipe:
tost`` with ``lrsi: {enabled: false}`` is ToST without LRsI). A preset may *pin* fields: a config
that names it and changes one of them is refused, so ``tost-official`` always means what the
authors ran. Two readings of ToST (see docs/fidelity.md):

- ``tost``: the paper's text (Sec. 2.2-2.3), the default. Identity skips where shapes match (a
  stride-matched 1x1 conv + BN where they do not), alpha 1 -> 0 and PSwish's beta 1 -> 50, both
  ghosts removed right before the first LR decay, LRsI (GradInit's SGD setting), label smoothing
  0.1 spread as a / K (Sec. 2.2-2.3).
- ``tost-official``: the released code (``VITA-Group/ToST``): a 1x1 conv (filled with 1e-4) + BN
  jump on every wrapped conv (``skip_connection/models/resnet_modified.py``), alpha never applied
  and the jumps never removed nor pruned, PSwish at a fixed beta = 2 (``SwishParameteric``), LRsI
  as the README's command (180 iterations, scale lr 1e-2, gamma 1, normalized, full batches),
  label smoothing 0.1 spread as a / (K - 1) (``label-smoothening/train_ticket.py``).
- ``official-jumps``: ``tost-official``'s jumps alone, kept to the end with alpha 1, nothing else: a control
  that separates the capacity the jumps keep from PSwish, LRsI and label smoothing (not in the paper).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from surgery.errors import ConfigError, did_you_mean

GHOST_SKIP = {"projection": "conv1x1"}
PSWISH = {"kind": "pswish"}
OFFICIAL_JUMP = {"projection": "conv1x1", "identity": False, "fill": 1e-4}


@dataclass(frozen=True)
class Preset:
    summary: str  # one line for --help, the docs and did-you-mean
    fields: Mapping[str, Any]  # dotted config field -> value
    pinned: tuple[str, ...] = ()  # fields a config naming this preset may not change
    fixed: Mapping[str, str] = field(default_factory=dict)  # pinned field -> where its value comes from

    @property
    def passes(self) -> dict[str, Any]:
        return dict(self.fields["recipe"])


def _tweaks(passes: Mapping[str, Any], lrsi: bool, smoothing: float) -> dict[str, Any]:
    """The fields every preset sets: the graph passes, LRsI on or off, constant label smoothing."""
    return {"recipe": dict(passes), "lrsi.enabled": lrsi, "label_smoothing.kind": "constant",
            "label_smoothing.start": smoothing, "label_smoothing.end": None, "label_smoothing.spread": "all"}


_OFFICIAL_SOURCES = {
    "recipe": "a 1x1 conv + BN jump beside every wrapped conv, weights filled with 1e-4, and PSwish "
              "(skip_connection/models/resnet_modified.py, soft_activation/activations.py)",
    "ghosts.beta": "PSwish's beta fixed at 2 (SwishParameteric)",
    "lrsi.enabled": "LRsI/train_ticket.py",
    "lrsi.iterations": "the README's --gradinit-iters 180",
    "lrsi.scale_lr": "the README's --gradinit-lr 1e-2",
    "lrsi.grad_norm_bound": "the README's --gradinit-gamma 1",
    "lrsi.normalize": "the README's --gradinit-normalize-grad",
    "lrsi.half_batches": "LRsI/gradinit_utils.py reads the 128-image loader's batches whole",
    "label_smoothing.kind": "label-smoothening/train_ticket.py",
    "label_smoothing.start": "label-smoothening/train_ticket.py: alpha = 0.1",
    "label_smoothing.end": "label-smoothening/train_ticket.py: constant",
    "label_smoothing.spread": "label-smoothening/train_ticket.py: alpha / (C - 1) on the wrong classes",
}

PRESETS: dict[str, Preset] = {
    "tost": Preset(
        "ToST as the paper's text says (the default): ghost skips + PSwish removed before the first LR decay, "
        "LRsI, label smoothing 0.1",
        _tweaks({"ghost_skip": GHOST_SKIP, "soft_activation": PSWISH}, lrsi=True, smoothing=0.1)),
    "tost-official": Preset(
        "ToST as the authors' released code runs it: 1x1 conv + BN jumps and PSwish (beta 2) kept to the end, "
        "LRsI as the README's command, label smoothing 0.1 over the wrong classes",
        {**_tweaks({"ghost_skip": OFFICIAL_JUMP, "soft_activation": PSWISH}, lrsi=True, smoothing=0.1),
         "label_smoothing.spread": "others",
         "ghosts.alpha": {"kind": "constant", "start": 1.0},
         "ghosts.beta": {"kind": "constant", "start": 2.0},
         "ghosts.remove_at": "never",
         "lrsi.iterations": 180, "lrsi.scale_lr": 1e-2, "lrsi.grad_norm_bound": 1.0, "lrsi.normalize": True,
         "lrsi.half_batches": False},
        pinned=tuple(_OFFICIAL_SOURCES), fixed=_OFFICIAL_SOURCES),
    "none": Preset("plain sparse training: no ghosts, no LRsI, no label smoothing (the baseline)",
                   _tweaks({}, lrsi=False, smoothing=0.0)),
    "official-jumps": Preset(
        "the released code's 1x1 conv + BN jumps alone, kept to the end at full strength: no PSwish, LRsI or label "
        "smoothing (what the kept capacity does by itself)",
        {**_tweaks({"ghost_skip": OFFICIAL_JUMP}, lrsi=False, smoothing=0.0),
         "ghosts.alpha": {"kind": "constant", "start": 1.0}, "ghosts.remove_at": "never"}),
    "gsk": Preset("ghost skips alone (Table 4's GSk)", _tweaks({"ghost_skip": GHOST_SKIP}, lrsi=False, smoothing=0.0)),
    "gsw": Preset("PSwish alone, with its beta schedule (Table 4's GSw)",
                  _tweaks({"soft_activation": PSWISH}, lrsi=False, smoothing=0.0)),
    "lrsi": Preset("LRsI alone (Table 4's LRsI)", _tweaks({}, lrsi=True, smoothing=0.0)),
    "ls": Preset("label smoothing 0.1 alone (Table 4's LS)", _tweaks({}, lrsi=False, smoothing=0.1)),
}
DEFAULT = "tost"
BASELINE = "none"  # what a sweep compares every other recipe against
# A recipe given as passes (a mapping or a recipe file) trains those passes alone: LRsI and label
# smoothing are on only where the config turns them on.
PASSES_ONLY = {name: value for name, value in PRESETS[BASELINE].fields.items() if name != "recipe"}


def preset(name: str) -> Preset:
    """The preset ``name``, or a ConfigError with a did-you-mean over the table."""
    if name not in PRESETS:
        raise ConfigError(f"unknown recipe preset '{name}'." + did_you_mean(name, PRESETS)
                          + f" Presets: {', '.join(PRESETS)} (or a recipe YAML file, or a mapping of passes).")
    return PRESETS[name]


def is_preset(value: Any) -> bool:
    return isinstance(value, str) and value in PRESETS


def contradictions(name: str | None, value_of) -> list[str]:
    """Each pinned field of preset ``name`` whose value (``value_of(dotted)``) is not the preset's, in words."""
    if name not in PRESETS:
        return []
    chosen = PRESETS[name]
    return [f"recipe {name} sets {dotted} to {chosen.fields[dotted]!r} ({chosen.fixed.get(dotted, 'the preset')}), "
            f"but the config sets {value_of(dotted)!r}. Drop that field, or use recipe: tost (the paper's text) or "
            "a recipe mapping for your own mix."
            for dotted in chosen.pinned if not _same(value_of(dotted), chosen.fields[dotted])]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b
