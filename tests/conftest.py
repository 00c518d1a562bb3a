import os

import pytest
import torch

# Triton kernels run on CPU only in the interpreter; triton.jit reads this when a kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bpmt_fast import require_cuda  # noqa: E402  (after TRITON_INTERPRET: it imports the attention backends)


def pytest_configure(config):
    """BPMT_REQUIRE_CUDA=1 on a machine without CUDA is a mistake: stop at once, in one line."""
    if require_cuda.enabled() and not torch.cuda.is_available():
        raise pytest.UsageError(require_cuda.no_cuda_message(torch.__version__, torch.version.cuda))


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def _fail_required_skip(report) -> None:
    """Under BPMT_REQUIRE_CUDA=1, a skip of a backend that should run on this CUDA machine becomes a failure."""
    if not (require_cuda.enabled() and report.skipped) or hasattr(report, "wasxfail"):
        return
    failure = require_cuda.skip_failure(_skip_reason(report), require_cuda.backend_status())
    if failure:
        report.outcome, report.longrepr = "failed", failure


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_required_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # module-level skips happen at collection
    _fail_required_skip(outcome.get_result())


@pytest.fixture(autouse=True)
def _seed_and_env(monkeypatch):
    """Every test starts from the same seed and without a process-wide backend choice."""
    monkeypatch.delenv("BPMT_ATTN_BACKEND", raising=False)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny tensors: on a small, shared CPU box threads cost more than they
    save. Use with `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
