"""Which registry run a trainer's checkpoints are recorded under (their lineage).

Normally ``pipeline.run_id``. A trainer that resumed from an older checkpoint -- the
newest files were corrupt, or deleted to roll back -- re-reaches steps its run already
recorded, with other weights. The registry keys checkpoints by (run, step), so such a
checkpoint *forks* the run: it and every later one of this trainer are recorded under
``<run_id>@<lineage>`` (the token also in its file names), a run whose config says
which run and step it forked from. A restored checkpoint that is already registered
continues its own run, so a forked lineage stays forked across restarts.

Nothing here ever records a file under a record it does not match: a registered path
whose bytes changed raises, and the trainer neither registers nor publishes it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from shared.registry import Registry, StepTaken

log = logging.getLogger(__name__)


class Lineage:
    def __init__(self, registry: Registry, run_id: str, symbol: str, config: dict[str, Any], token: str) -> None:
        self.registry, self.run_id, self.symbol, self.config, self.token = registry, run_id, symbol, config, token
        self._ensured: set[str] = set()

    def register(self, step: int, path: Path, sha256: str) -> int:
        """The registry id of checkpoint `path` (recording it if new). ValueError if the
        path is registered with another sha256 (the file was replaced)."""
        known = self.registry.checkpoints_by_paths([str(path)]).get(str(path))
        if known is not None:
            if known.sha256 != sha256:
                raise ValueError(
                    f"{path} is registered as checkpoint {known.id} with sha256 {known.sha256[:16]}..., not "
                    f"{sha256[:16]}...: the file was replaced after it was registered"
                )
            self.run_id = known.run_id  # a restored checkpoint: continue its lineage
            return known.id
        self._ensure(self.run_id, None)
        try:
            return self.registry.add_checkpoint(self.run_id, step, str(path), sha256)
        except StepTaken as exc:
            fork = f"{self.run_id.split('@')[0]}@{self.token}"
            log.warning("%s; recording this trainer's checkpoints under the forked run %r", exc, fork)
            self._ensure(fork, {"parent_run": self.run_id, "forked_at_step": int(step)})
            self.run_id = fork
            return self.registry.add_checkpoint(fork, step, str(path), sha256)

    def _ensure(self, run_id: str, fork: dict[str, Any] | None) -> None:
        if run_id not in self._ensured:
            config = self.config if fork is None else {**self.config, "lineage": fork}
            self.registry.ensure_run(run_id, self.symbol, config)
            self._ensured.add(run_id)
