"""Test-only: let accelerate's own FSDP2 path run on CPU processes joined by gloo.

accelerate 1.15 turns `distributed_type: FSDP` on only for GPU-like devices (`AcceleratorState`
switches to FSDP from MULTI_GPU, MULTI_XPU, ... but not from MULTI_CPU), so on a CPU-only machine
an FSDP config trains with DDP. torch 2.13's `fully_shard` itself runs on a gloo CPU mesh. This
patch lifts only that device gate: after accelerate has built its state from the launch config, a
MULTI_CPU state that was handed an FSDP plugin becomes an FSDP state with that plugin, exactly as
accelerate does for a GPU. Everything else (wrapping, sharding, gathering, no_sync, clipping) is
accelerate's and torch's own code. The product refuses the unpatched case (fsdp.refuse_ignored_fsdp).
"""

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_accelerate_init = AcceleratorState.__init__


def _init_allowing_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _accelerate_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type in (DistributedType.MULTI_CPU, DistributedType.FSDP):
        # What AcceleratorState.__init__ does for a GPU launch with an FSDP plugin.
        self.distributed_type = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def allow_fsdp_on_cpu() -> None:
    AcceleratorState.__init__ = _init_allowing_fsdp_on_cpu
