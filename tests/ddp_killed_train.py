"""`bpmt-fast train` whose every rank dies at the start of finetune epoch KILL_EPOCH (0-based), as a kill would
stop a job: used by the 2-rank resume test (tests/test_distributed.py) under torchrun."""
import os
import sys

from bpmt_fast.cli import main
from bpmt_fast.train.stages import FinetuneStage

KILL_EPOCH = int(os.environ["KILL_EPOCH"])
_train_epoch = FinetuneStage.train_epoch


def train_epoch_or_die(self, epoch, *args):
    if epoch == KILL_EPOCH:
        raise SystemExit(f"simulated kill at finetune epoch {epoch + 1}")
    return _train_epoch(self, epoch, *args)


FinetuneStage.train_epoch = train_epoch_or_die
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
