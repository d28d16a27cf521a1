"""A fitted joint head (`classify.joint`) as plain data, and back: what run folders and model
bundles store instead of a pickle.

`joint_state(head)` gives a JSON-able description (class, rule, hyper-parameters, modalities,
their feature dimensions, pooling windows, class count, training history summary) and a dict
of numpy arrays: every tensor of the network's `state_dict` under `net.<name>`, and each
modality's standardisation statistics under `scale.<i>.mean` / `scale.<i>.std` (i: the
modality's position). `joint_from_state` rebuilds the network from the description and loads
the arrays strictly: a missing, unexpected or wrongly shaped array is one `ValueError` line
naming it, never a half-loaded head.
"""
from __future__ import annotations

import numpy as np

from classify.joint import _HEADS, CrossAttentionFusion

CLASSES = {cls.__name__: (rule, cls) for rule, cls in _HEADS.items()}


def joint_state(head) -> tuple[dict, dict]:
    """(description, arrays) of a fitted joint head."""
    if not hasattr(head, "net_"):
        raise ValueError(f"this {type(head).__name__} is not fitted yet")
    rule = next(r for r, cls in _HEADS.items() if isinstance(head, cls))
    desc = {"class": type(head).__name__, "rule": rule,
            "params": {k: v for k, v in head.get_params().items() if k != "verbose"},
            "n_classes": int(head.n_classes_), "modalities": list(head.modalities_),
            "dims": {m: int(d) for m, d in head.dims_.items()},
            "best_epoch": int(head.best_epoch_), "epochs": len(head.history_)}
    if isinstance(head, CrossAttentionFusion):
        desc["window"] = {m: int(w) for m, w in head.window_.items()}
    arrays = {f"net.{k}": v.detach().cpu().numpy() for k, v in head.net_.state_dict().items()}
    for i, m in enumerate(head.modalities_):
        mean, std = head.scale_[m]
        arrays[f"scale.{i}.mean"], arrays[f"scale.{i}.std"] = np.asarray(mean), np.asarray(std)
    return desc, arrays


def _shape(a) -> tuple:
    return tuple(int(s) for s in a.shape)


def joint_from_state(desc: dict, arrays: dict):
    """The inverse of `joint_state`: a head that predicts exactly as the saved one did."""
    import torch

    if desc.get("class") not in CLASSES:
        raise ValueError(f"unknown joint head class {desc.get('class')!r}; known: {', '.join(CLASSES)}")
    rule, cls = CLASSES[desc["class"]]
    if desc.get("rule", rule) != rule:
        raise ValueError(f"joint head class {desc['class']} is rule {rule!r}, the description says {desc['rule']!r}")
    try:
        head = cls(**desc["params"])
        head.modalities_ = [str(m) for m in desc["modalities"]]
        head.dims_ = {m: int(desc["dims"][m]) for m in head.modalities_}
        head.n_classes_ = int(desc["n_classes"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the joint head's description is incomplete or wrong: {exc!r}") from None
    head.classes_ = np.arange(head.n_classes_)
    head.best_epoch_, head.history_ = int(desc.get("best_epoch", 0)), []
    head.scale_ = {}
    for i, m in enumerate(head.modalities_):
        for part in ("mean", "std"):
            key = f"scale.{i}.{part}"
            if key not in arrays:
                raise ValueError(f"array {key} ({m}'s standardisation) is missing")
            if _shape(arrays[key]) != (head.dims_[m],):
                raise ValueError(f"array {key} has shape {_shape(arrays[key])}, {m} has {head.dims_[m]} features")
        head.scale_[m] = (np.asarray(arrays[f"scale.{i}.mean"], np.float32), np.asarray(arrays[f"scale.{i}.std"], np.float32))
    if isinstance(head, CrossAttentionFusion):
        try:
            head.window_ = {m: int(desc["window"][m]) for m in head.modalities_}
        except (KeyError, TypeError):
            raise ValueError("the xattn head's description lacks its pooling windows") from None
    head._check_params()
    net = head._build()
    expected = {k: _shape(v) for k, v in net.state_dict().items()}
    given = {k[4:]: v for k, v in arrays.items() if k.startswith("net.")}
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing or extra:
        raise ValueError(f"the network's arrays do not match its description: "
                         + (f"missing net.{missing[0]}" if missing else f"unexpected net.{extra[0]}")
                         + (f" (and {len(missing) + len(extra) - 1} more)" if len(missing) + len(extra) > 1 else ""))
    for k, shape in expected.items():
        if _shape(given[k]) != shape:
            raise ValueError(f"array net.{k} has shape {_shape(given[k])}, the network expects {shape}")
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in given.items()}, strict=True)
    net.eval()
    head.net_ = net
    return head
