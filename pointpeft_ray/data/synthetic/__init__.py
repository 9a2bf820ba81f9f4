"""Offline synthetic benchmark suite mirroring ScanObjectNN / ModelNet.

15 procedural furniture classes (ScanObjectNN's names and label order) in four
variants: `clean` (full surface, ModelNet-like, also the pre-training corpus),
`objonly` (one noisy partial depth scan), `objbg` (the scan with floor, wall
and neighbouring furniture inside the object's box, extras["mask"]) and
`hardest` (objbg cropped by a PB_T50_RS-style perturbed box). y is up.
"""
from .classes import CLASS_NAMES
from .suite import DEFAULT_SAMPLES, GENERATOR_VERSION, VARIANTS, make_split

__all__ = ["CLASS_NAMES", "DEFAULT_SAMPLES", "GENERATOR_VERSION", "VARIANTS", "make_split"]
