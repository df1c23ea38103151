"""``microzero model summary``: parameters per sub-network and a forward-pass sanity check."""

from __future__ import annotations

import argparse

from shared.model.config import ModelConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="inspect the Stochastic MuZero networks")
    commands = model.add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND")
    summary = commands.add_parser("summary", help="parameter counts per network and a forward-pass check")
    summary.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device to build the model on")
    summary.set_defaults(func=summary_command)


def summary_command(args: argparse.Namespace, config) -> int:
    import torch

    from shared.model.networks import StochasticMuZeroNet

    cfg: ModelConfig = config.model
    from shared.device import pick_device

    device = pick_device(args.device)
    model = StochasticMuZeroNet(cfg).to(device).eval()

    counts = model.parameter_counts()
    print(f"{'network':<24}{'parameters':>12}")
    for name, n in counts.items():
        if name == "total":
            print("-" * 36)
        print(f"{name:<24}{n:>12,}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {device} ({name})")

    batch = 2
    obs = torch.randn(batch, cfg.window, cfg.input_features, device=device)
    with torch.no_grad():
        state, policy, value = model.initial_inference(obs)
        afterstate, sigma, q = model.afterstate_inference(state, torch.zeros(batch, dtype=torch.long, device=device))
        code, _ = model.encode_chance(obs)
        next_state, reward, policy2, value2 = model.recurrent_inference(afterstate, code.argmax(-1))
    shape = lambda t: "x".join(map(str, t.shape))  # noqa: E731
    print(
        f"forward ok: obs {shape(obs)} -> state {shape(state)}, policy {shape(policy)}, value {shape(value)}; "
        f"afterstate {shape(afterstate)}, sigma {shape(sigma)}, q {shape(q)}; "
        f"code {shape(code)} -> state {shape(next_state)}, reward {shape(reward)}, "
        f"policy {shape(policy2)}, value {shape(value2)}"
    )
    return 0
