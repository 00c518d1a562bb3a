"""`python -m bpmt_fast.info [--json]`: versions, GPU and every attention backend, available or not and why (the
same report as `bpmt-fast backends`, as `python -m xformers.info` is for xformers)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from bpmt_fast.cli import main as cli_main

    return cli_main(["backends", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
