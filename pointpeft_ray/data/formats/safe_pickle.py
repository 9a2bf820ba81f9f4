"""Restricted unpickling for the pickled dataset caches.

A pickle can name any importable callable and have the loader call it, so
loading an untrusted .dat/.pkl with pickle.load can run arbitrary code. The
unpickler here resolves only the handful of globals that numpy arrays and plain
containers need, and refuses everything else before it is imported.
"""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np

from ...errors import DataFormatError
from ._checks import require_path


def _numpy_core(module: str):
    """numpy 2 moved numpy.core to numpy._core; pickles from either era name either one."""
    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{module}")


def _allowed_globals() -> dict[tuple[str, str], object]:
    multiarray = _numpy_core("multiarray")
    numeric = _numpy_core("numeric")
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for prefix in ("numpy.core", "numpy._core"):
        # Protocols 0-4 rebuild arrays with _reconstruct, numpy scalars with scalar;
        # protocol 5 rebuilds arrays with _frombuffer.
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer
    # Protocols 0-2 spell every bytes object (so every array's data) as _codecs.encode(text, "latin1").
    allowed[("_codecs", "encode")] = _latin1_encode
    # Containers without their own opcode in older protocols ("__builtin__" in protocol 2).
    for module in ("builtins", "__builtin__"):
        for name, value in (("set", set), ("frozenset", frozenset), ("bytearray", bytearray)):
            allowed[(module, name)] = value
    return allowed


class _Refused(pickle.UnpicklingError):
    """Raised inside the unpickler; safe_unpickle turns it into a DataFormatError naming the file."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The one use pickle makes of _codecs.encode; any other codec is refused, not looked up."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"refused _codecs.encode with encoding {encoding!r} in a dataset pickle")
    return text.encode("latin1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _Refused(
                f"refused to unpickle global '{module}.{name}': only numpy "
                "arrays and plain containers are allowed in a dataset pickle"
            ) from None

    def persistent_load(self, pid):
        raise _Refused(f"refused persistent id {pid!r} in a dataset pickle")


def safe_unpickle(path: str | Path):
    """Load a pickle that may hold only numpy arrays, numpy scalars and plain containers."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return _NumpyOnlyUnpickler(handle).load()
    except _Refused as exc:
        raise DataFormatError(f"{path}: {exc}") from None
    except FileNotFoundError as exc:
        raise DataFormatError(f"file not found: {path}") from exc
    except Exception as exc:  # truncated/corrupt pickles raise many kinds of error
        raise DataFormatError(
            f"{path}: cannot unpickle (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc


def load_pickle_opted_in(path: Path, allow_pickle: bool, layout: str):
    """safe_unpickle, but only after the caller has explicitly opted in."""
    require_path(path, layout)
    if not allow_pickle:
        raise DataFormatError(
            f"{path} is a pickle, and loading a pickle can run code. It is read only on "
            "explicit opt-in: pass allow_pickle=True (the loader then admits numpy arrays "
            "and plain containers only)."
        )
    return safe_unpickle(path)
