"""bpmt-fast: skeleton gait recognition (BPMT) with swappable attention backends and our own Triton kernels."""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path


class _SourceTreeKernels(importlib.abc.MetaPathFinder):
    """Finds `bpmt_fast.kernels` in the top-level kernels/ folder of a source tree that was not installed.

    setup.py maps kernels/ to `bpmt_fast.kernels` (package_dir) only when the package is installed. A GPU machine
    without internet runs `make gpu-check` straight from the tree (PYTHONPATH=.), so the same mapping is made
    here; only that one name is mapped, never a top-level `kernels` (an unrelated PyPI package has that name)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def find_spec(self, name, path=None, target=None):
        if name != "bpmt_fast.kernels":
            return None
        return importlib.util.spec_from_file_location(name, self.folder / "__init__.py",
                                                      submodule_search_locations=[str(self.folder)])


def _map_source_tree_kernels() -> None:
    package = Path(__file__).resolve().parent
    root = package.parent
    installed = (package / "kernels").is_dir()  # a regular install copies kernels/ into the package
    source_tree = (root / "setup.py").is_file() and (root / "kernels" / "__init__.py").is_file()
    if not installed and source_tree and not any(isinstance(f, _SourceTreeKernels) for f in sys.meta_path):
        # Appended: an editable install's own finder (earlier on the path) maps the same folder first.
        sys.meta_path.append(_SourceTreeKernels(root / "kernels"))


_map_source_tree_kernels()


def __getattr__(name: str):
    """`bpmt_fast.load_run` and friends, imported on first use so `import bpmt_fast` stays light."""
    if name in ("load_run", "TrainedRun", "Embeddings"):
        from bpmt_fast import api

        return getattr(api, name)
    raise AttributeError(f"module 'bpmt_fast' has no attribute {name!r}")
