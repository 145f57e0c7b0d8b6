"""Test harness, launched by torchrun: run_mlm.py with accelerate's FSDP engaged on CPU processes.

    torchrun --nproc_per_node 2 tests/fsdp_on_cpu.py run_mlm.py examples/fsdp.yaml --use_cpu --bf16 False ...

PyTorch's FSDP2 (``fully_shard``) runs on a CPU device mesh with gloo, but accelerate engages FSDP only for GPU-type
distributed setups: for CPU processes (``DistributedType.MULTI_CPU``) ``AcceleratorState`` leaves the plugin unused
and the Trainer trains plain DDP (which run_mlm.py refuses, see trainer.check_fsdp). This harness makes that one
decision the other way, as it is made on GPUs, so the tests exercise everything that follows (sharding by the
model's layers, sharded checkpoints and their resume, the gathered final save) on 2 CPU processes. It is test code
and patches nothing of ours.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_accelerator_state_init = AcceleratorState.__init__


def _init_engaging_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # What AcceleratorState does for MULTI_GPU with a plugin (mixed precision stays off: fp32 on the CPU).
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


if __name__ == "__main__":
    AcceleratorState.__init__ = _init_engaging_fsdp_on_cpu
    sys.argv = sys.argv[1:]
    # As `python run_mlm.py` would have it: the script's folder first on the import path, not this file's.
    sys.path[0] = str(Path(sys.argv[0]).resolve().parent)
    runpy.run_path(sys.argv[0], run_name="__main__")
