"""It learns: self-play + learning on a learnable synthetic series beats chance on
held-out bars. About two minutes on 2 CPU cores with a small model."""

import numpy as np
import pytest
import torch

from shared.backtest import backtest
from shared.baselines import PerfectForesight, RandomLegal
from shared.config import Config
from shared.data.synthetic import synthetic_bars
from shared.learning.checkpoint import load_checkpoint
from shared.market import market_from_bars
from shared.model.networks import StochasticMuZeroNet
from shared.training import evaluate, train


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_greedy_agent_beats_random_and_earns_on_held_out_bars(tmp_path):
    torch.manual_seed(0)
    config = Config(
        model=dict(tcn_channels=16, hidden=64, head_hidden=32, encoder_hidden=32, residual_blocks=1),
        search=dict(num_simulations=4),
        # Fresh self-play data every ~180 learner steps: more policy-iteration rounds.
        learning=dict(lr=1e-3, samples_per_insert=2, samples_per_insert_tolerance=1000),
        train=dict(num_envs=16, warmup_policy="random", checkpoint_every=10**9),
    )
    # Periodic drift (48-bar period) plus noise: learnable, and costly to trade at random.
    market = market_from_bars("SYNTH", synthetic_bars("sine", 8000, seed=0, noise_pips=1.0), config)
    result = train(config, market, tmp_path, steps=2500, seed=0, progress=False)
    assert result.steps == 2500 and result.checkpoints

    model = StochasticMuZeroNet(config.model)
    model.load_state_dict(load_checkpoint(result.checkpoints[-1]).state_dict)
    split = market.splits(config)["validation"]  # never played during training
    agent = evaluate(model, market, config, "validation", "cpu", chunks=8).metrics
    random = backtest(market, split, RandomLegal(seed=0), chunks=8).metrics
    oracle = backtest(market, split, PerfectForesight(market.close, market.pip, market.spread_pips), chunks=8).metrics
    print(
        f"agent {agent.total_pips:.0f} pips, random {random.total_pips:.0f}, perfect foresight {oracle.total_pips:.0f}"
    )

    assert agent.trades > 10  # it trades, rather than winning by staying flat
    assert agent.total_pips > random.total_pips + 500  # a clear margin over chance
    assert agent.total_pips > 0.1 * oracle.total_pips  # and it earns, net of the spread
    assert np.isfinite([h["loss"] for h in result.history]).all()
