"""The one description of how a job's processes are laid out (torchtitan's ParallelDims idea).

Every strategy asks this object — never WORLD_SIZE directly — how many data-parallel replicas
and pipeline stages there are, and it is validated against the real world size up front so a
wrong layout fails before any collective can hang.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torchyard_trainer.env import ConfigError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


@dataclass(frozen=True)
class ParallelDims:
    """Data × pipeline parallel degrees of a job."""

    dp: int
    """Data-parallel degree: model replicas that see different data."""
    pp: int
    """Pipeline-parallel degree: ranks one model is split across (1 = no pipeline)."""
    world_size: int
    """Number of processes; must equal dp × pp."""
    virtual_stages: int = 1
    """Model chunks per pipeline rank (≥ 2 for interleaved schedules)."""

    def __post_init__(self) -> None:
        if self.dp < 1 or self.pp < 1 or self.virtual_stages < 1:
            raise ConfigError(f"parallel degrees must be ≥ 1, got dp={self.dp} pp={self.pp}")
        if self.dp * self.pp != self.world_size:
            raise ConfigError(
                f"parallel layout dp={self.dp} × pp={self.pp} = {self.dp * self.pp} does not "
                f"match WORLD_SIZE={self.world_size} (workers × procsPerWorker)"
            )

    @classmethod
    def build(cls, world_size: int, pp: int = 1, virtual_stages: int = 1) -> ParallelDims:
        """Derive dp from the world size; error clearly when ``pp`` does not divide it."""
        if pp < 1 or world_size % pp != 0:
            raise ConfigError(
                f"pipeline.stages={pp} must divide WORLD_SIZE={world_size} "
                "(workers × procsPerWorker)"
            )
        return cls(dp=world_size // pp, pp=pp, world_size=world_size, virtual_stages=virtual_stages)

    @property
    def pp_enabled(self) -> bool:
        return self.pp > 1

    @property
    def dp_enabled(self) -> bool:
        return self.dp > 1

    @property
    def num_stages(self) -> int:
        """Total pipeline stages (model chunks): pp × virtual_stages."""
        return self.pp * self.virtual_stages

    def coords(self, rank: int) -> tuple[int, int]:
        """(dp_rank, pp_rank) of a global rank in the row-major (dp, pp) mesh."""
        return rank // self.pp, rank % self.pp

    def build_mesh(self, device_type: str) -> DeviceMesh:
        """The 2-D ("dp", "pp") DeviceMesh (needs an initialised process group)."""
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(device_type, (self.dp, self.pp), mesh_dim_names=("dp", "pp"))
