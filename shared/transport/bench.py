"""``microzero bench pipeline``: can the transport keep up with the collectors?

Measures, against a real Redis, episodes/s through the whole trainer-side chain --
encode -> XADD (pipelined per self-play batch, as a collector sends) -> XREADGROUP ->
decode -> insert into a real ReplayBuffer -> XACK -- and one collector's production
rate (SelfPlay with the search at the configured model, simulations and num_envs). The
ratio says how many such collectors one trainer's transport can serve (target >= 10).
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid

import redis
import torch

from shared.config import Config
from shared.learning import ReplayBuffer
from shared.market import MarketData
from shared.model.networks import StochasticMuZeroNet
from shared.selfplay import SearchPolicy, SelfPlay
from shared.transport.codec import decode_episode, encode_episode
from shared.transport.streams import EpisodeStream

TARGET_RATIO = 10.0


def bench_transport(
    client: redis.Redis,
    n_episodes: int = 2000,
    *,
    config: Config | None = None,
    market: MarketData | None = None,
    device: str | torch.device = "cpu",
    collector_steps: int = 8,
    read_count: int = 64,
) -> dict:
    """Episodes/s of the transport and of one collector, and their ratio.

    The collector rate is measured on `collector_steps` search steps of a batch of
    ``train.num_envs`` environments and extrapolated to ``env.episode_length``-step
    episodes (a batch's cost is linear in its steps). The stream is a fresh,
    uniquely named one, deleted afterwards.
    """
    config = config or Config()
    if market is None:
        from shared.market import open_market

        market = open_market(config, config.pipeline.symbol)
    B, T = config.train.num_envs, config.env.episode_length

    # Distinct, valid episodes (warm-up play: cheap), reused under distinct ids.
    selfplay = SelfPlay.from_config(config, market, seed=0, run_id=config.pipeline.run_id, episode_length=T)
    base = [
        e
        for _ in range(max(1, math.ceil(min(n_episodes, 4 * B) / B)))
        for e in selfplay.play(config.train.warmup_policy)
    ]
    episodes = [dataclasses.replace(base[i % len(base)], episode_id=f"bench-{i}") for i in range(n_episodes)]
    replay = ReplayBuffer(market, config.learning, config.env.window, config.env.drawdown_penalty, seed=0)

    stream = EpisodeStream(client, f"mz:bench:{uuid.uuid4().hex[:12]}", maxlen=max(2 * n_episodes, 100))
    group, consumer = "bench", "bench-consumer"
    stage = dict.fromkeys(("encode", "xadd", "xreadgroup", "decode", "insert", "xack"), 0.0)
    try:
        stream.ensure_group(group)
        # Producer side: one pipelined XADD per self-play batch of B episodes.
        for start in range(0, n_episodes, B):
            t0 = time.perf_counter()
            payloads = [encode_episode(e) for e in episodes[start : start + B]]
            t1 = time.perf_counter()
            pipe = client.pipeline(transaction=False)
            for payload in payloads:
                pipe.xadd(stream.stream, {b"episode": payload}, maxlen=stream.maxlen, approximate=True)
            pipe.execute()
            stage["encode"] += t1 - t0
            stage["xadd"] += time.perf_counter() - t1
        # Consumer side, as the trainer does it (decoding inline, so timed apart).
        consumed = 0
        while consumed < n_episodes:
            t0 = time.perf_counter()
            reply = client.xreadgroup(group, consumer, {stream.stream: ">"}, count=read_count)
            t1 = time.perf_counter()
            messages = reply[0][1] if reply else []
            if not messages:
                raise RuntimeError(f"the stream returned {consumed} of {n_episodes} episodes")
            decoded = [(entry_id, decode_episode(fields[b"episode"])) for entry_id, fields in messages]
            t2 = time.perf_counter()
            for _, episode in decoded:
                replay.insert(episode)
            t3 = time.perf_counter()
            stream.ack(group, [entry_id for entry_id, _ in decoded])
            t4 = time.perf_counter()
            stage["xreadgroup"] += t1 - t0
            stage["decode"] += t2 - t1
            stage["insert"] += t3 - t2
            stage["xack"] += t4 - t3
            consumed += len(decoded)
        payload_bytes = len(encode_episode(episodes[0]))
    finally:
        client.delete(stream.stream, stream.dead_stream)

    produce_s = stage["encode"] + stage["xadd"]
    consume_s = stage["xreadgroup"] + stage["decode"] + stage["insert"] + stage["xack"]
    transport = n_episodes / (produce_s + consume_s)

    # One collector: the search at the configured model and simulations.
    device = torch.device(device)
    model = StochasticMuZeroNet(config.model).to(device).eval()
    policy = SearchPolicy(model, config.search, device, seed=0)
    short = SelfPlay.from_config(config, market, seed=1, run_id=config.pipeline.run_id, episode_length=collector_steps)
    short.play(policy, model_version=1)  # warm-up: allocations, lazy init
    t0 = time.perf_counter()
    short.play(policy, model_version=1)
    step_s = (time.perf_counter() - t0) / collector_steps
    collector = B / (T * step_s)

    return {
        "n_episodes": n_episodes,
        "stream": stream.stream,  # deleted again
        "episode_length": T,
        "episode_bytes": payload_bytes,
        "transport_episodes_per_s": transport,
        "produce_episodes_per_s": n_episodes / produce_s,
        "consume_episodes_per_s": n_episodes / consume_s,
        "stage_ms_per_episode": {k: 1e3 * v / n_episodes for k, v in stage.items()},
        "collector_episodes_per_s": collector,
        "collector_env_steps_per_s": B / step_s,
        "collector_num_envs": B,
        "collector_simulations": config.search.num_simulations,
        "collector_device": str(device),
        "ratio": transport / collector,
        "target_ratio": TARGET_RATIO,
        "meets_target": transport / collector >= TARGET_RATIO,
    }


def format_transport(report: dict) -> str:
    """Human-readable lines for ``microzero bench pipeline``."""
    stages = "  ".join(f"{k} {v:.3f}" for k, v in report["stage_ms_per_episode"].items())
    return "\n".join(
        [
            f"transport: {report['n_episodes']} episodes of {report['episode_length']} steps ({report['episode_bytes']:,} bytes each)",
            (
                f"  encode->XADD->XREADGROUP->decode->insert->XACK  {report['transport_episodes_per_s']:10.1f} episodes/s"
                f"  (produce {report['produce_episodes_per_s']:.0f}/s, consume {report['consume_episodes_per_s']:.0f}/s)"
            ),
            f"  ms per episode: {stages}",
            (
                f"collector: {report['collector_num_envs']} envs, {report['collector_simulations']} simulations, "
                f"{report['collector_device']}: {report['collector_episodes_per_s']:.2f} episodes/s "
                f"({report['collector_env_steps_per_s']:.0f} env-steps/s)"
            ),
            f"ratio transport / collector = {report['ratio']:.1f}  (target >= {report['target_ratio']:.0f})",
        ]
    )
