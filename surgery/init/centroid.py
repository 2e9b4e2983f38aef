"""ASNI's centroid initialization: a learned sparse structure started from 2L numbers.

ASNI (Algorithm 1, lines 12-18) trains and gradually prunes a network once, then replaces
each layer's learned weights by two signed centroids: for layer ``l`` with mask ``m`` and
learned sparse weights ``theta``,

    c+ = mean(theta[m & theta > 0])        c- = mean(theta[m & theta < 0])
    theta_0 = c+ * 1[theta > 0] + c- * 1[theta < 0]        (pruned entries stay 0)

The paper shows that this initialization, trained again on the same mask, reaches the
accuracy of the learned sparse network. A layer with no kept positive (negative) weight
has c+ (c-) = 0.0, which then lands on no entry. Norm layers start at weight 1 and
every conv / linear / norm bias at 0 ("initialization for batch normalization weights is
one and initialization for biases is zero").

**What has to be stored.** The 2L centroids alone do not say *which* kept entry gets c+:
that is the sign pattern of the learned weights, part of ASNI's "learned sparse structure".
``signs`` gives it as one bool tensor per layer (True = positive; False elsewhere, pruned
entries included). Both travel in the mask file's safetensors metadata, so one file holds
the whole initialization and stays an ordinary mask file:

    save_masks(masks, path, **centroids_to_metadata(c), **signs_to_metadata(s, masks))

``asni.centroids`` is a JSON ``{param: [c_plus, c_minus]}`` (exact float round-trip);
``asni.signs`` is a JSON ``{param: {"kept": n, "bits": base64}}`` holding one bit per *kept*
entry (in row-major order of the mask's True positions), about 1/8 byte per kept weight.
They are not stored as ``<param>.positive`` tensors in the mask file because every tensor of
a mask file is read as a mask (``compile`` would refuse them as unknown parameters).
``apply_centroids_from_metadata(model, metadata)`` starts a masked model from such a file.
Standalone files: ``save_centroids(path, c, signs)`` writes ``.safetensors`` (``<param>.positive``
bool tensors plus the centroids metadata) or ``.json`` (centroids only); ``load_centroids``
reads both.

``centroid_init`` writes ``c+`` where the mask keeps an entry and the sign says positive and
``c-`` where it keeps one and says negative. A kept entry whose learned value is exactly 0
has neither sign in the paper (it stays 0); a bool sign cannot say so, so ``apply_centroids``
(which has the learned values) counts such entries as pruned, and ``signs`` users should
pass ``mask & (theta != 0)`` as the mask (ASNI's magnitude threshold never keeps a zero).
Masked models keep their masks: values go into the parametrization's ``original`` and are
multiplied by the mask, so pruned entries are exactly zero.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from surgery.errors import ConfigError, MaskError, did_you_mean
from surgery.compiler.ghosts import GHOSTS_ROOT
from surgery.init.rewind import plain_state_dict
from surgery.init.zero import NORM_TYPES
from surgery.fx.layers import LAYER_TYPES
from surgery.compiler.masks import Mask, load_masks, masked_parameters, owner_of
from surgery.compiler.weight_files import read_safetensors

Centroids = dict[str, tuple[float, float]]  # parameter name -> (c_plus, c_minus)
METADATA_KEY = "asni.centroids"
SIGNS_METADATA_KEY = "asni.signs"
SIGN_SUFFIX = ".positive"


@dataclass
class CentroidInitResult:
    """What ``centroid_init`` wrote."""

    centroids: Centroids  # the (c_plus, c_minus) each weight got
    kept: dict[str, int] = field(default_factory=dict)  # weight name -> entries set to a centroid
    norms: list[str] = field(default_factory=list)  # norm modules reset to weight 1, bias 0
    biases: list[str] = field(default_factory=list)  # biases set to 0


# ---------------------------------------------------------------------- computing


def centroids(weights_or_model: nn.Module | Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> Centroids:
    """``{name: (c_plus, c_minus)}``: the means of each masked layer's kept positive / negative weights."""
    learned = _learned_weights(weights_or_model, masks)
    found: Centroids = {}
    for name, mask in masks.items():
        weight = learned[name].double()
        kept = _as_mask(name, mask, weight)
        found[name] = (_mean(weight[kept & (weight > 0)]), _mean(weight[kept & (weight < 0)]))
    return found


def signs(learned_state: nn.Module | Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{name: bool tensor}``: True where the mask keeps an entry and its learned value is positive."""
    learned = _learned_weights(learned_state, masks)
    return {name: (_as_mask(name, mask, learned[name]) & (learned[name] > 0)).cpu() for name, mask in masks.items()}


def _mean(values: Tensor) -> float:
    return float(values.mean()) if values.numel() else 0.0  # no such weight: the centroid lands nowhere


def _learned_weights(source: nn.Module | Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The learned value of every weight ``masks`` names (a masked model's weights with its mask applied)."""
    if isinstance(source, nn.Module):
        state = {name: _effective_weight(source, name) for name in masks}
    elif isinstance(source, Mapping):
        state = plain_state_dict(source)
    else:
        raise ConfigError(
            f"learned weights must be an nn.Module or a state_dict mapping, got a {type(source).__name__}."
        )
    for name in masks:
        if name not in state or state[name] is None:
            raise MaskError(
                f"mask '{name}' names no weight of the learned model or state_dict."
                + did_you_mean(name, [k for k, v in state.items() if v is not None])
                + " Masks and learned weights must come from the same architecture."
            )
    return {name: state[name].detach() for name in masks}


def _effective_weight(model: nn.Module, name: str) -> Tensor | None:
    try:
        module, attr = owner_of(model, name)
    except AttributeError:
        return None
    weight = getattr(module, attr, None)  # a masked weight reads as original * mask
    return weight if torch.is_tensor(weight) else None


def _as_mask(name: str, mask: Tensor, weight: Tensor) -> Tensor:
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) != tuple(weight.shape):
        raise MaskError(
            f"mask '{name}' has shape {tuple(mask.shape)} but the weight has shape {tuple(weight.shape)}; "
            "was the mask made for another model or num_classes?"
        )
    return mask.to(device=weight.device, dtype=torch.bool)


# ---------------------------------------------------------------------- applying


@torch.no_grad()
def centroid_init(
    model: nn.Module,
    centroids: Mapping[str, tuple[float, float]],
    signs: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None = None,
    *,
    reset_norms_and_biases: bool = True,
) -> CentroidInitResult:
    """Write ASNI's initialization into ``model`` in place: c+ / c- on kept entries by sign, 0 elsewhere.

    An entry is kept where ``masks`` (when given) and the model's own mask (when the weight
    is masked) both keep it; a weight with neither is refused. With
    ``reset_norms_and_biases``, norm layers get weight 1 and bias 0 and every conv / linear
    bias 0, as ASNI does; ghosts are never touched.
    """
    result = CentroidInitResult({name: (float(cp), float(cm)) for name, (cp, cm) in centroids.items()})
    for name, (c_plus, c_minus) in result.centroids.items():
        stored, attached = _stored_weight(model, name)
        kept = _kept(name, stored, attached, masks)
        if name not in signs:
            raise MaskError(f"centroid_init has centroids for '{name}' but no sign tensor; pass signs(learned, masks).")
        positive = _as_mask(name, signs[name], stored)
        value = torch.full_like(stored, c_minus).masked_fill_(positive, c_plus).masked_fill_(~kept, 0.0)
        stored.copy_(value)
        for mask in attached:
            stored.mul_(mask)
        result.kept[name] = int(kept.count_nonzero())
    if reset_norms_and_biases:
        _reset_norms_and_biases(model, result)
    return result


def apply_centroids(
    model: nn.Module, learned_state: nn.Module | Mapping[str, Tensor], masks: Mapping[str, Tensor]
) -> CentroidInitResult:
    """Compute the centroids and signs of ``learned_state`` on ``masks`` and write them into ``model``.

    Kept entries whose learned value is exactly 0 are treated as pruned (the paper's
    indicator functions leave them 0). Norms get weight 1, biases 0.
    """
    learned = _learned_weights(learned_state, masks)
    nonzero = {name: _as_mask(name, mask, learned[name]) & (learned[name] != 0) for name, mask in masks.items()}
    return centroid_init(model, centroids(learned, nonzero), signs(learned, nonzero), nonzero)


def _stored_weight(model: nn.Module, name: str) -> tuple[Tensor, list[Tensor]]:
    """The tensor holding weight ``name`` (a mask parametrization's ``original``) and its masks."""
    try:
        module, attr = owner_of(model, name)
    except AttributeError:
        module, attr = None, ""
    if module is not None and parametrize.is_parametrized(module, attr):
        plist = module.parametrizations[attr]
        return plist.original, [p.mask for p in plist if isinstance(p, Mask)]
    weight = getattr(module, attr, None) if module is not None else None
    if not isinstance(weight, nn.Parameter):
        names = [n.replace(".parametrizations.", ".").removesuffix(".original") for n, _ in model.named_parameters()]
        raise MaskError(
            f"centroids name '{name}', which is no parameter of {type(model).__name__}."
            + did_you_mean(name, names)
            + " Centroids are keyed by parameter names as in the plain model's state_dict."
        )
    return weight, []


def _kept(name: str, stored: Tensor, attached: list[Tensor], masks: Mapping[str, Tensor] | None) -> Tensor:
    kept = torch.ones_like(stored, dtype=torch.bool)
    for mask in attached:
        kept &= mask
    if masks is not None and name in masks:
        kept &= _as_mask(name, masks[name], stored)
    elif not attached:
        raise MaskError(
            f"centroid_init does not know which entries of '{name}' are kept: the weight is not masked and "
            "no mask was given. Pass masks=..., or compile the model with its masks first."
        )
    return kept


def _reset_norms_and_biases(model: nn.Module, result: CentroidInitResult) -> None:
    for path, module in model.named_modules():
        parts = path.split(".")
        if parts[0] == GHOSTS_ROOT or "parametrizations" in parts:
            continue
        if isinstance(module, NORM_TYPES) and getattr(module, "weight", None) is not None:
            _stored_weight(model, f"{path}.weight" if path else "weight")[0].fill_(1.0)
            result.norms.append(path)
        if isinstance(module, (*NORM_TYPES, *LAYER_TYPES)) and getattr(module, "bias", None) is not None:
            _stored_weight(model, f"{path}.bias" if path else "bias")[0].zero_()
            result.biases.append(f"{path}.bias" if path else "bias")


# -------------------------------------------------------------------------- files


def centroids_to_metadata(centroids: Mapping[str, tuple[float, float]]) -> dict[str, str]:
    """``{"asni.centroids": JSON}`` for safetensors metadata (a mask file's, via ``save_masks(..., **meta)``)."""
    table = {name: [float(cp), float(cm)] for name, (cp, cm) in centroids.items()}
    return {METADATA_KEY: json.dumps(table, sort_keys=True)}  # json writes repr(float): exact round-trip


def centroids_from_metadata(metadata: Mapping[str, str]) -> Centroids:
    """The centroids ``centroids_to_metadata`` wrote (e.g. a mask file's ``load_masks(path)[1]``)."""
    if METADATA_KEY not in metadata:
        raise MaskError(
            f"the metadata holds no '{METADATA_KEY}' entry (it has {sorted(metadata)}); write the centroids "
            "with save_masks(masks, path, **centroids_to_metadata(c)) or save_centroids(path, c, signs)."
        )
    try:
        table = json.loads(metadata[METADATA_KEY])
        return {str(name): (float(pair[0]), float(pair[1])) for name, pair in table.items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise MaskError(f"the '{METADATA_KEY}' metadata entry is malformed ({error}); write it again.") from error


def signs_to_metadata(signs: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, str]:
    """``{"asni.signs": JSON}``: one bit per kept entry of each mask (1 = positive), base64-packed."""
    table = {}
    for name, mask in masks.items():
        if name not in signs:
            raise MaskError(
                f"signs_to_metadata has a mask for '{name}' but no sign tensor; pass signs(learned, masks)."
            )
        kept = _as_mask(name, mask, torch.as_tensor(signs[name])).cpu().flatten()
        bits = torch.as_tensor(signs[name]).to(torch.bool).cpu().flatten()[kept].numpy()
        table[name] = {"kept": int(kept.sum()), "bits": base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")}
    return {SIGNS_METADATA_KEY: json.dumps(table, sort_keys=True)}


def signs_from_metadata(metadata: Mapping[str, str], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The bool sign tensors ``signs_to_metadata`` packed, spread back onto each mask's kept entries."""
    if SIGNS_METADATA_KEY not in metadata:
        raise MaskError(
            f"the metadata holds no '{SIGNS_METADATA_KEY}' entry, so which kept weights start at c+ is unknown; "
            "write the mask with save_masks(masks, path, **centroids_to_metadata(c), **signs_to_metadata(s, masks))."
        )
    try:
        table = json.loads(metadata[SIGNS_METADATA_KEY])
    except ValueError as error:
        raise MaskError(f"the '{SIGNS_METADATA_KEY}' metadata entry is malformed ({error}); write it again.") from error
    found: dict[str, Tensor] = {}
    for name, mask in masks.items():
        kept = torch.as_tensor(mask).to(torch.bool).cpu()
        entry = table.get(name)
        if not isinstance(entry, dict) or entry.get("kept") != int(kept.sum()):
            have = "nothing" if not isinstance(entry, dict) else f"{entry.get('kept')} kept entries"
            raise MaskError(
                f"the '{SIGNS_METADATA_KEY}' metadata has {have} for '{name}', whose mask keeps {int(kept.sum())}; "
                "the signs were saved with another mask. Save signs and mask together."
            )
        packed = np.frombuffer(base64.b64decode(entry["bits"]), dtype=np.uint8)
        bits = torch.from_numpy(np.unpackbits(packed, count=entry["kept"]).astype(bool))
        positive = torch.zeros(kept.numel(), dtype=torch.bool)
        positive[kept.flatten()] = bits
        found[name] = positive.view(kept.shape)
    return found


def apply_centroids_from_metadata(
    model: nn.Module, metadata: Mapping[str, str], mask_file: str | os.PathLike | None = None
) -> CentroidInitResult:
    """Start ``model`` from the centroids and signs a mask file's metadata carries.

    The masks are the model's attached ones (a model compiled with the mask file), or the
    masks in ``mask_file`` when given (then the model need not be masked).
    """
    c = centroids_from_metadata(metadata)
    found = load_masks(mask_file)[0] if mask_file is not None else masked_parameters(model)
    masks = {name: m for name, m in found.items() if name in c}
    missing = [name for name in c if name not in masks]
    if missing:
        raise MaskError(
            f"the centroids name {len(missing)} weight(s) without a mask ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); compile the model with the mask file the centroids came with."
        )
    return centroid_init(model, c, signs_from_metadata(metadata, masks), masks)


def save_centroids(
    path: str | os.PathLike,
    centroids: Mapping[str, tuple[float, float]],
    signs: Mapping[str, Tensor] | None = None,
    **metadata: object,
) -> Path:
    """Write the centroids (and signs) to ``.safetensors`` (``<param>.positive`` tensors) or ``.json``."""
    path = Path(path)
    if path.suffix == ".json":
        if signs:
            raise ConfigError(f"'{path}' is JSON, which holds the centroids only; save signs to a .safetensors path.")
        table = {name: [float(cp), float(cm)] for name, (cp, cm) in centroids.items()}
        document = {"format": "tost-surgery-centroids", "metadata": metadata, "centroids": table}
        path.write_text(json.dumps(document, indent=1, sort_keys=True, default=str) + "\n")
        return path
    if path.suffix != ".safetensors":
        raise ConfigError(f"save_centroids writes .safetensors or .json files, not '{path.suffix}' ('{path}').")
    from safetensors.torch import save_file

    tensors = {
        name + SIGN_SUFFIX: torch.as_tensor(positive).to(torch.bool).contiguous().cpu()
        for name, positive in (signs or {}).items()
    }
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta.setdefault("format", "tost-surgery-centroids")
    save_file(tensors, str(path), metadata={**meta, **centroids_to_metadata(centroids)})
    return path


def load_centroids(path: str | os.PathLike) -> tuple[Centroids, dict[str, Tensor]]:
    """``(centroids, signs)`` from a file ``save_centroids`` wrote (signs are empty for JSON)."""
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"centroid file '{path}' does not exist; write one with save_centroids(path, c, signs).")
    if path.suffix == ".json":
        try:
            table = json.loads(path.read_text())["centroids"]
        except (ValueError, KeyError, TypeError) as error:
            raise MaskError(f"'{path}' is not a centroid JSON file ({error}).") from error
        return centroids_from_metadata({METADATA_KEY: json.dumps(table)}), {}
    try:
        tensors, metadata = read_safetensors(path)
    except Exception as error:
        raise MaskError(f"'{path}' is not a readable safetensors centroid file: {error}") from error
    found_signs = {name.removesuffix(SIGN_SUFFIX): t for name, t in tensors.items() if name.endswith(SIGN_SUFFIX)}
    return centroids_from_metadata(metadata), found_signs
