"""The pretrained models users can serve, rebuilt at their real size with random weights.

Compute does not depend on the weights' values, so these measure what the
released checkpoints cost without downloading them. Sizes and bags follow
demucs' own files (demucs/remote/*.yaml, the training grids in the demucs
repository); where the exact release configuration is not in the package,
the choice and its evidence are written next to it, and the model cards
repeat it.
"""

from __future__ import annotations

FOUR = ["drums", "bass", "other", "vocals"]
SIX = FOUR + ["guitar", "piano"]

# Released HTDemucs, assumed: the 512-channel bottleneck and a 7.8 s segment (41.5 M
# parameters; the class defaults give 26.9 M and 10 s). Evidence: demucs refuses
# --segment above 7.8 s for the released HTDemucs (its max_allowed_segment is the
# model's segment), the training grid in the demucs repository sweeps bottom_channels
# over 0 and 512, and third-party ports of the checkpoint default to 512 and 7.8 s.
HTDEMUCS = dict(bottom_channels=512, segment=7.8)


def build(name: str, seed: int = 0):
    """A BagOfModels (or single model) with the named release's architecture and bag."""
    import torch
    from demucs.apply import BagOfModels
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    if name == "tiny":  # the tests' tiny HTDemucs: for checking the scripts, not for figures
        return HTDemucs(sources=FOUR, channels=16, depth=4, t_layers=1, t_heads=2, segment=4).eval()
    if name == "htdemucs":
        return HTDemucs(sources=FOUR, **HTDEMUCS).eval()
    if name == "htdemucs_6s":
        return HTDemucs(sources=SIX, **HTDEMUCS).eval()
    if name == "htdemucs_ft":
        # demucs/remote/htdemucs_ft.yaml: four fine-tuned HTDemucs, each weighted for one
        # stem; apply_model still runs all four on the whole track.
        models = [HTDemucs(sources=FOUR, **HTDEMUCS) for _ in range(4)]
        weights = [[1.0 if i == k else 0.0 for k in range(4)] for i in range(4)]
        return BagOfModels(models, weights).eval()
    if name == "mdx_extra":
        # demucs/remote/mdx_extra.yaml: four Demucs v3 models, segment 44 s. The grid that
        # trained them (demucs/grids/mdx_extra.py) mixes time-domain Demucs and Hybrid Demucs;
        # like the MDX track A bag (repro_mdx_a_{time,hybrid}_only.yaml), two of each is assumed,
        # at the training config's sizes (the classes' defaults: 64 and 48 channels).
        return BagOfModels([Demucs(FOUR), Demucs(FOUR), HDemucs(FOUR), HDemucs(FOUR)], segment=44).eval()
    raise KeyError(f"unknown architecture {name!r}; known: {', '.join(NAMES)}")


NAMES = ("htdemucs", "htdemucs_ft", "htdemucs_6s", "mdx_extra")


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
