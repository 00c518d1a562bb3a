"""Load pose pickles (OpenGait / FastPoseGait `.pkl`, PYSKL / mmaction2 annotations) without running their code.

`pickle.load` calls whatever callable a file names, so a downloaded `.pkl` can run any code. `load_pickle`
unpickles with a restricted `find_class`: plain containers, numbers and strings need no class at all, and the
only globals a file may name are those that rebuild NumPy arrays, dtypes and scalars (and the two helpers the
pickle protocol uses for bytes and sets). Anything else is refused with `UnsafePickleError` naming the file and
the global it tried to use; nothing is constructed or called.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

from bpmt_fast.data.sequence import DataError

# (module, name) a pose pickle may reference: NumPy's array / dtype / scalar reconstruction under its old
# (`numpy.core`) and new (`numpy._core`) module names, and the protocol's own helpers.
ALLOWED_GLOBALS = frozenset(
    {(core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray")
     for name in ("_reconstruct", "scalar")}
    | {(core, "_frombuffer") for core in ("numpy.core.numeric", "numpy._core.numeric")}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
    # protocol 2 names the builtins module "__builtin__" (Python 2); pickle maps it after this check
    | {(builtins, name) for builtins in ("builtins", "__builtin__") for name in ("set", "frozenset", "bytearray",
                                                                               "complex")})


class UnsafePickleError(DataError):
    """A pickle named a global outside `ALLOWED_GLOBALS`: refused before anything was built."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(f"{self.source}: refused to load: the pickle asks for {module}.{name}, which is "
                                    f"not a plain container, number, string or NumPy array (pose pickles need "
                                    f"nothing else; nothing was built or run)")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused to load: the pickle uses a persistent id ({pid!r})")


def load_pickle(path: str | Path):
    """The object in the pickle file `path`, built only from allowed types (see the module docstring)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error}") from error
    return loads_pickle(data, str(path))


def loads_pickle(data: bytes, source: str = "<bytes>"):
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # truncated or corrupt: a data error naming the file, not a crash
        raise DataError(f"{source}: not a readable pickle: {type(error).__name__}: {error}") from error
