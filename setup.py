"""bpmt-fast: skeleton-based gait recognition with swappable, kernel-accelerated attention."""
from setuptools import find_packages, setup

setup(
    name="bpmt-fast",
    version="0.1.0",
    description="Body Part as Modality Transformer for gait recognition, with swappable attention backends",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Kernels live in the top-level kernels/ folder but install as bpmt_fast.kernels: a top-level module named
    # `kernels` would clash with an unrelated, widely used PyPI package.
    packages=find_packages(include=["bpmt_fast", "bpmt_fast.*"]) + ["bpmt_fast.kernels"],
    package_dir={"bpmt_fast": "bpmt_fast", "bpmt_fast.kernels": "kernels"},
    # Real Gait3D sequence lengths: the bpmt-varlen benchmark shape set draws from them.
    package_data={"bpmt_fast.bench": ["gait3d_lengths.txt"], "bpmt_fast.kernels": ["tuned/*.json"]},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "einops>=0.7",
        "pyyaml",
        "safetensors",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-benchmark",
            "hypothesis",
            # The Triton interpreter (TRITON_INTERPRET=1) runs our kernels on CPU; triton 3.6 needs numpy<2.4 there.
            # Pinned: the compile check (tests/test_kernels_compile.py) holds register / spill budgets for this
            # triton; `make compile-report` also compiles with 3.6 (what CUDA builds of torch 2.11 ship).
            "triton==3.9.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
            "numpy<2.4",
        ],
        "flash": ["flash-attn>=2.6"],
        "xformers": ["xformers>=0.0.28"],
    },
    entry_points={"console_scripts": ["bpmt-fast=bpmt_fast.cli:console_main"]},
)
