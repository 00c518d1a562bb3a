"""Tuned launch configurations for our Triton kernels: committed tables, looked up by the launchers.

Key
    `(kernel, mode, head_block, bucket, dtype, arch)`:
    kernel      the Triton kernel whose launch is configured: "fwd", "dkdv", "dq", "fused_bwd", ... (the names
                `_config` / `_packed_config` of kernels/varlen_attention.py take as `kernel`);
    mode        how rows map to programs: "segment" (a program owns a block of one segment, `_config`) or
                "packed" (a program owns consecutive rows of all segments, `_packed_config`);
    head_block  padded head dim the launcher tiles with: max(head_block(D), head_block(Dv)), one of 16/32/64/128;
    bucket      `length_bucket(max_seqlen)`: the power-of-two class of the longest segment, 16, 32, 64, 128, 256
                or 512 (512 stands for "512 and longer");
    dtype       "fp16", "bf16" or "fp32" (a torch.dtype is accepted and converted);
    arch        "sm<major><minor>" of the GPU, e.g. "sm90" (`device_arch()`); one table file per arch.
Value: `{"block_m", "block_n", "num_warps", "num_stages"}` (ints).

Contract for launchers (the owner of kernels/varlen_attention.py wires this)
    Before using its default configuration, a launcher calls

        cfg = tuned_config(kernel, mode, head_block, max(max_seqlen_q, max_seqlen_k), q.dtype)

    (`arch=None`: the current CUDA device's) and, when it returns a dict, launches with exactly those four values;
    None means "no entry": use the default. It must call it for every kernel it launches, with the mode it runs
    in, on every call (the lookup is a few dict reads; the tables are loaded once per process). Under the Triton
    interpreter (`kernels.common.INTERPRET`) the tables are never read: one fixed configuration there.
    A tuned configuration only changes tiling, never results beyond rounding order; launchers must stay correct
    for any power-of-two block >= 16 they are given (the tuner rejects a candidate whose output differs from the
    default's, and one that raises). The automatic packed / per-segment choice (`_auto_pack_rows`) is made before
    the lookup and is not part of the table: `mode` is the mode the launch actually runs in.

Override (how the tuner tries candidates through the public launchers)
    `with override_config(kernel, config):` makes `tuned_config(kernel, ...)` return `config` for every mode,
    head dim, length and dtype while active, even under the interpreter, and yields the set of keys it answered,
    so the tuner can tell a launcher that ignores the table (its candidates would all time the same) from one
    that asks with the key being tuned. `tables_disabled()` makes every lookup without an override return None,
    so the tuner times the launcher's own default, not an older table's choice.

Tables
    `kernels/tuned/<arch>.json`, plain JSON written by `bpmt-fast bench tune` (bpmt_fast/bench/tune.py) on a GPU:
        {"format": 1, "arch": "sm90",
         "runs": [{"device": ..., "torch": ..., "triton": ..., "date": ..., ...}],
         "entries": [{"kernel": "fwd", "mode": "segment", "head_block": 32, "bucket": 64, "dtype": "bf16",
                      "config": {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2},
                      "median_ms": ..., "default_ms": ..., "run": 0, ...}]}
    A missing file means no entries. A malformed one raises `TuningTableError` naming the file, the entry and
    the bad key or value, on the first lookup for its arch. Installed (non-editable) copies find the tables only
    when setup.py ships them: package_data {"bpmt_fast.kernels": ["tuned/*.json"]}.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
from pathlib import Path
from typing import Iterator, Mapping

import torch

from . import common

TUNED_DIR = Path(__file__).resolve().parent / "tuned"
FORMAT = 1
CONFIG_FIELDS = ("block_m", "block_n", "num_warps", "num_stages")
MODES = ("segment", "packed")
HEAD_BLOCKS = (16, 32, 64, 128)
BUCKETS = (16, 32, 64, 128, 256, 512)  # 512: "512 and longer"
DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
WARPS = (1, 2, 4, 8, 16)
MAX_BLOCK = 256
MAX_STAGES = 8

TABLE_FIELDS = {"format", "arch", "runs", "entries"}
KEY_FIELDS = ("kernel", "mode", "head_block", "bucket", "dtype")
# Required entry fields, then optional ones (measurements the tuner records; free for readers, checked for type).
ENTRY_FIELDS = set(KEY_FIELDS) | {"config"}
OPTIONAL_ENTRY_FIELDS = {"median_ms", "default_ms", "run", "measured", "skipped"}


class TuningTableError(ValueError):
    """A tuned table (or an override) that breaks the format: the message names the file and the bad key."""


def length_bucket(max_seqlen: int) -> int:
    """Power-of-two class of the longest segment: 16 for <= 16, 32 for 17..32, ..., 512 for > 256."""
    n = max(int(max_seqlen), 1)
    bucket = 1 << (n - 1).bit_length()  # next power of two >= n
    return min(max(bucket, BUCKETS[0]), BUCKETS[-1])


def dtype_name(dtype: torch.dtype | str) -> str:
    if isinstance(dtype, str):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of {', '.join(DTYPES.values())}, got {dtype!r}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"no tuning key for dtype {dtype}; supported: {', '.join(map(str, DTYPES))}")
    return DTYPES[dtype]


def make_key(kernel: str, mode: str, head_block: int, max_seqlen: int, dtype) -> tuple:
    """(kernel, mode, head_block, bucket, dtype name): the table key within one arch."""
    return (kernel, mode, int(head_block), length_bucket(max_seqlen), dtype_name(dtype))


@functools.lru_cache(maxsize=None)
def _arch_of(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm{major}{minor}"


def device_arch(device: torch.device | int | None = None) -> str | None:
    """"sm90" for a (9, 0) device (cached per device); None without CUDA."""
    if not torch.cuda.is_available():
        return None
    if isinstance(device, int):
        index = device
    elif device is not None and device.index is not None:
        index = device.index
    else:
        index = torch.cuda.current_device()
    return _arch_of(index)


# ---------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(config: Mapping, where: str) -> dict:
    """The four launch values as a dict of ints; TuningTableError naming `where` and the bad key otherwise."""
    if hasattr(config, "_asdict"):  # a launcher's _Config NamedTuple
        config = config._asdict()
    if not isinstance(config, Mapping):
        raise TuningTableError(f"{where}: config must be an object with {', '.join(CONFIG_FIELDS)}, got "
                               f"{type(config).__name__}")
    unknown = sorted(set(config) - set(CONFIG_FIELDS))
    missing = [f for f in CONFIG_FIELDS if f not in config]
    if unknown:
        raise TuningTableError(f"{where}: unknown config key(s) {unknown}; expected {', '.join(CONFIG_FIELDS)}")
    if missing:
        raise TuningTableError(f"{where}: config misses {', '.join(missing)}")
    for name in ("block_m", "block_n"):
        value = config[name]
        if not (_is_int(value) and 16 <= value <= MAX_BLOCK and value & (value - 1) == 0):
            raise TuningTableError(f"{where}: config.{name} must be a power of two in [16, {MAX_BLOCK}] "
                                   f"(tl.dot needs tile sides >= 16), got {value!r}")
    if not (_is_int(config["num_warps"]) and config["num_warps"] in WARPS):
        raise TuningTableError(f"{where}: config.num_warps must be one of {WARPS}, got {config['num_warps']!r}")
    if not (_is_int(config["num_stages"]) and 1 <= config["num_stages"] <= MAX_STAGES):
        raise TuningTableError(f"{where}: config.num_stages must be an integer in [1, {MAX_STAGES}], got "
                               f"{config['num_stages']!r}")
    return {name: int(config[name]) for name in CONFIG_FIELDS}


def _check_key_fields(entry: Mapping, where: str) -> tuple:
    kernel, mode, head_block, bucket, dtype = (entry[f] for f in KEY_FIELDS)
    if not (isinstance(kernel, str) and kernel):
        raise TuningTableError(f"{where}: kernel must be a non-empty string, got {kernel!r}")
    if mode not in MODES:
        raise TuningTableError(f"{where}: mode must be one of {MODES}, got {mode!r}")
    if not (_is_int(head_block) and head_block in HEAD_BLOCKS):
        raise TuningTableError(f"{where}: head_block must be one of {HEAD_BLOCKS} (the padded head dim), got "
                               f"{head_block!r}")
    if not (_is_int(bucket) and bucket in BUCKETS):
        raise TuningTableError(f"{where}: bucket must be one of {BUCKETS} (length_bucket), got {bucket!r}")
    if dtype not in DTYPES.values():
        raise TuningTableError(f"{where}: dtype must be one of {tuple(DTYPES.values())}, got {dtype!r}")
    return (kernel, mode, head_block, bucket, dtype)


def _check_optional(entry: Mapping, where: str, num_runs: int) -> None:
    for name in ("median_ms", "default_ms"):
        value = entry.get(name)
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and math.isfinite(value) and value > 0):
            raise TuningTableError(f"{where}: {name} must be a positive number of milliseconds or null, got "
                                   f"{value!r}")
    if "run" in entry and not (_is_int(entry["run"]) and 0 <= entry["run"] < num_runs):
        raise TuningTableError(f"{where}: run must index the table's runs [0, {num_runs - 1}], got {entry['run']!r}")
    if "measured" in entry and not (_is_int(entry["measured"]) and entry["measured"] >= 0):
        raise TuningTableError(f"{where}: measured must be a count >= 0, got {entry['measured']!r}")
    if "skipped" in entry and not isinstance(entry["skipped"], list):
        raise TuningTableError(f"{where}: skipped must be a list, got {type(entry['skipped']).__name__}")


def parse_table(data, source: str, arch: str | None = None) -> dict[tuple, dict]:
    """{(kernel, mode, head_block, bucket, dtype): config} from a decoded table; `source` names it in errors."""
    if not isinstance(data, dict):
        raise TuningTableError(f"{source}: a table must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - TABLE_FIELDS)
    if unknown:
        raise TuningTableError(f"{source}: unknown top-level key(s) {unknown}; expected {sorted(TABLE_FIELDS)}")
    if data.get("format") != FORMAT:
        raise TuningTableError(f"{source}: format must be {FORMAT}, got {data.get('format')!r}")
    if arch is not None and data.get("arch") != arch:
        raise TuningTableError(f"{source}: arch {data.get('arch')!r} does not match the file's arch {arch!r}")
    runs = data.get("runs", [])
    if not (isinstance(runs, list) and all(isinstance(run, dict) for run in runs)):
        raise TuningTableError(f"{source}: runs must be a list of objects")
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise TuningTableError(f"{source}: entries must be a list, got {type(entries).__name__}")
    table: dict[tuple, dict] = {}
    for i, entry in enumerate(entries):
        where = f"{source}: entries[{i}]"
        if not isinstance(entry, dict):
            raise TuningTableError(f"{where}: must be an object, got {type(entry).__name__}")
        unknown = sorted(set(entry) - ENTRY_FIELDS - OPTIONAL_ENTRY_FIELDS)
        missing = sorted(ENTRY_FIELDS - set(entry))
        if unknown:
            raise TuningTableError(f"{where}: unknown key(s) {unknown}; expected {sorted(ENTRY_FIELDS)} and "
                                   f"optionally {sorted(OPTIONAL_ENTRY_FIELDS)}")
        if missing:
            raise TuningTableError(f"{where}: missing key(s) {missing}")
        key = _check_key_fields(entry, where)
        where = f"{where} {key}"
        config = check_config(entry["config"], where)
        _check_optional(entry, where, len(runs))
        if key in table:
            raise TuningTableError(f"{where}: duplicate key (an earlier entry has the same kernel, mode, "
                                   f"head_block, bucket and dtype)")
        table[key] = config
    return table


def load_table(path: str | Path, arch: str | None = None) -> dict[tuple, dict]:
    """Entries of one table file (whose "arch" must be `arch` when given); {} when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TuningTableError(f"{path}: not valid JSON ({error})") from None
    return parse_table(data, str(path), arch=arch)


# ---------------------------------------------------------------------------------------------------------------
# lookup
# ---------------------------------------------------------------------------------------------------------------
_TABLES: dict[str, dict[tuple, dict]] = {}  # arch -> entries, loaded on first use
_OVERRIDES: dict[str, dict] = {}  # kernel -> {"config": ..., "lookups": {keys answered}}
_DISABLED = [0]  # depth of tables_disabled() blocks


def clear_cache() -> None:
    """Forget loaded tables (tests; after writing a table in this process)."""
    _TABLES.clear()


def table_for(arch: str) -> dict[tuple, dict]:
    if arch not in _TABLES:
        _TABLES[arch] = load_table(TUNED_DIR / f"{arch}.json", arch)
    return _TABLES[arch]


def tuned_config(kernel: str, mode: str, head_block: int, max_seqlen: int, dtype,
                 arch: str | None = None) -> dict | None:
    """The tuned {"block_m", "block_n", "num_warps", "num_stages"} for this launch, or None (use the default).

    An active `override_config(kernel, ...)` wins everywhere; otherwise None under the interpreter, inside
    `tables_disabled()`, without CUDA (arch None) or without an entry."""
    override = _OVERRIDES.get(kernel)
    if override is not None:
        override["lookups"].add(make_key(kernel, mode, head_block, max_seqlen, dtype))
        return dict(override["config"])
    if common.INTERPRET or _DISABLED[0]:
        return None
    arch = arch or device_arch()
    if arch is None:
        return None
    config = table_for(arch).get(make_key(kernel, mode, head_block, max_seqlen, dtype))
    return dict(config) if config is not None else None


@contextlib.contextmanager
def override_config(kernel: str, config: Mapping) -> Iterator[set]:
    """While active, `tuned_config(kernel, ...)` returns `config`; yields the set of keys it has answered."""
    state = {"config": check_config(config, f"override_config({kernel!r})"), "lookups": set()}
    previous = _OVERRIDES.get(kernel)
    _OVERRIDES[kernel] = state
    try:
        yield state["lookups"]
    finally:
        if previous is None:
            del _OVERRIDES[kernel]
        else:
            _OVERRIDES[kernel] = previous


@contextlib.contextmanager
def tables_disabled() -> Iterator[None]:
    """While active, lookups without an override return None: launchers run their own defaults."""
    _DISABLED[0] += 1
    try:
        yield
    finally:
        _DISABLED[0] -= 1
