"""A run: its configuration, its directory (:class:`RunDir`, the one owner of every artefact's path) and the
stages that read and write it, in order (``nasbert run`` runs them all).

>>> from nasbert.run import STAGES
>>> STAGES
('supernet', 'latency', 'train', 'search', 'export')
"""

from .rundir import MANIFEST, STAGES, RunConfig, RunDir
from .stages import (run_stage, stage_export, stage_latency, stage_search, stage_supernet, stage_train,
                     supernet_is_read, teacher_parity)

__all__ = ["MANIFEST", "STAGES", "RunConfig", "RunDir", "run_stage", "stage_export", "stage_latency", "stage_search",
           "stage_supernet", "stage_train", "supernet_is_read", "teacher_parity"]
