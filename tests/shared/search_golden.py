"""Fixed search cases whose outputs are pinned in ``search_golden.json``.

The file was recorded from the search as it was before its speed work (commit 0d4b614);
``test_search.py::test_outputs_pinned_to_recorded_values`` checks that today's search
gives the very same actions and visit counts, and the same policy targets and root
values (to a few units in the last place in float64, to the CPU's last bits in
float32). Cases cover the batch sizes that matter: greedy serving (B = 1, 8, default
model, 15 simulations), self-play (B = 16, Gumbel noise), Reanalyse (B = 64, the
--small preset's model sizes with 16 chance codes, as recorded, and 4 simulations),
pUCT, and the hand-built float64 TinyModel of test_search.py.

Re-record (only when a change is *meant* to alter search results):
``PYTHONPATH=. python -m tests.shared.search_golden``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from shared.actions import LEGAL_BY_SIDE
from shared.model.config import ModelConfig
from shared.model.networks import StochasticMuZeroNet
from shared.search import SearchConfig, SearchOutput, run_search

GOLDEN = Path(__file__).with_name("search_golden.json")

# Spelled out, not imported from the --small preset: the preset changes (one chance code
# since), the recorded case must not.
SMALL_MODEL = {"tcn_channels": 16, "hidden": 64, "head_hidden": 32, "encoder_hidden": 32, "residual_blocks": 1}
GREEDY = {"gumbel_scale": 0.0, "dirichlet_fraction": 0.0, "temperature": 0.0}

# name -> (model: "default" | "small" | "tiny", B, search overrides, generator seed or None)
CASES: dict[str, tuple[str, int, dict, int | None]] = {
    "serve-b1": ("default", 1, GREEDY, None),
    "serve-b8": ("default", 8, GREEDY, None),
    "selfplay-b16": ("default", 16, {}, 3),
    "reanalyse-b64": ("small", 64, {"num_simulations": 4}, 4),
    "reanalyse-b64-15": ("small", 64, {}, 5),
    "puct-b8": ("default", 8, {"root": "puct", "num_simulations": 9}, 6),
    "tiny-gumbel-b10": ("tiny", 10, {"num_simulations": 25, "max_considered_actions": 2}, 7),
    "tiny-puct-b10": ("tiny", 10, {"root": "puct", "num_simulations": 30}, 8),
}


def _model(kind: str) -> object:
    if kind == "tiny":
        from tests.shared.test_search import TinyModel

        return TinyModel(wiggle=0.4)
    cfg = ModelConfig(**SMALL_MODEL) if kind == "small" else ModelConfig()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return StochasticMuZeroNet(cfg).eval()


def _inputs(B: int, seed: int, random_masks: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """obs [B, 64, 15] in [0, 1), legal [B, 4] bool, side [B] long."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand((B, 64, 15), generator=g)
    side = torch.randint(-1, 2, (B,), generator=g)
    legal = torch.as_tensor(LEGAL_BY_SIDE)[side + 1]
    if random_masks:
        legal = torch.rand((B, 4), generator=g) < 0.5
        legal[torch.arange(B), torch.randint(0, 4, (B,), generator=g)] = True
    return obs, legal, side


def run_case(name: str) -> SearchOutput:
    kind, B, overrides, seed = CASES[name]
    obs, legal, side = _inputs(B, 100 + len(name) * 7 + B, random_masks=kind == "tiny")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return run_search(_model(kind), obs, legal, side, SearchConfig(**overrides), generator)  # type: ignore[arg-type]


def as_record(out: SearchOutput) -> dict[str, list]:
    """Outputs as exact JSON: Python floats (float64) round-trip exactly, float32 widens exactly."""
    return {
        "action": out.action.tolist(),
        "visit_counts": out.visit_counts.tolist(),
        "policy_target": out.policy_target.double().tolist(),
        "root_value": out.root_value.double().tolist(),
        "dtype": [str(out.root_value.dtype)],
    }


def record() -> None:
    lines = [f"{json.dumps(name)}: {json.dumps(as_record(run_case(name)))}" for name in CASES]
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    record()
