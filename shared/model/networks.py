"""Stochastic MuZero networks (Antonoglou et al. 2022) for one forex observation window.

Six functions, each a sub-network of :class:`StochasticMuZeroNet`:

    representation        s      = h(o_t)             obs [B, W, 15]      -> state [B, 256]
    prediction            p, v   = f(s)               state               -> policy [B, 4], value [B, 41]
    afterstate dynamics   as     = phi(s, a)          state, action [B]   -> afterstate [B, 256]
    afterstate prediction sigma,Q= psi(as)            afterstate          -> sigma [B, 16], Q [B, 41]
    dynamics              s', r  = g(as, c)           afterstate, code    -> state [B, 256], reward [B, 41]
    chance encoder        c      = e(o_{t+1})         obs [B, W, 15]      -> code one-hot [B, 16] (straight-through)

Value, reward and Q are logits over the categorical support of support.py.

Hidden-state scaling: every state and afterstate is min-max scaled to [0, 1] per sample,
as in MuZero. All three producers (representation and both dynamics) end the same way,
so the recurrent networks see inputs on one scale at every unroll depth, and the
scaling bounds the latent without constraining its direction. LayerNorm is used
*inside* the trunks (after each Linear) for stable training.

The search talks to the model only through ``shared.search.SearchModel`` (scalars decoded,
codes and actions as integer indices); the learner uses the raw-logit methods
(``represent``, ``predict``, ``afterstate``, ``afterstate_predict``, ``dynamics``,
``encode_chance``). Batching, device placement and ``torch.no_grad`` are the caller's
business; call ``model.eval()`` before searching (see tcn.py on BatchNorm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.model.config import ModelConfig
from shared.model.support import scalar_to_support, support_to_scalar
from shared.model.tcn import TCN

# ----------------------------------------------------------------------------- pieces


def scale_to_unit(x: Tensor) -> Tensor:
    """Min-max scale each row of x [B, H] to [0, 1] (MuZero's hidden-state normalisation)."""
    lo, hi = torch.aminmax(x, dim=-1, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-5)


class ResidualBlock(nn.Module):
    """relu(x + LN(W2 relu(LN(W1 x)))), width preserved."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.norm1 = nn.Linear(width, width), nn.LayerNorm(width)
        self.fc2, self.norm2 = nn.Linear(width, width), nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.fc1(x)))
        y = self.norm2(self.fc2(y))
        return F.relu(x + y)


class Trunk(nn.Module):
    """Linear -> LayerNorm -> ReLU -> residual blocks -> min-max scale: [B, in] -> [B, H] in [0, 1]."""

    def __init__(self, in_features: int, width: int, blocks: int):
        super().__init__()
        self.fc = nn.Linear(in_features, width)
        self.norm = nn.LayerNorm(width)
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return scale_to_unit(self.blocks(F.relu(self.norm(self.fc(x)))))


class Head(nn.Module):
    """Linear -> LayerNorm -> ReLU -> Linear: [B, in] -> [B, out] logits."""

    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, out_features)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------- sub-networks


class Representation(nn.Module):
    """obs [B, T, F] -> state [B, H]: TCN, attention pooling over time, concat newest bar, trunk."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tcn = TCN(cfg.input_features, cfg.tcn_channels, cfg.tcn_kernel, cfg.tcn_dilations, cfg.dropout)
        self.score = nn.Linear(cfg.tcn_channels, 1)  # attention score of each time step
        self.trunk = Trunk(cfg.tcn_channels + cfg.input_features, cfg.hidden, cfg.residual_blocks)

    def forward(self, obs: Tensor) -> Tensor:
        z = self.tcn(obs)  # [B, T, C]
        weights = torch.softmax(self.score(z), dim=1)  # [B, T, 1], sums to 1 over time
        pooled = (weights * z).sum(dim=1)  # [B, C]
        x = torch.cat([pooled, obs[:, -1]], dim=-1)  # [B, C + F], raw newest bar appended
        return self.trunk(x)  # [B, H]


class Prediction(nn.Module):
    """f: state [B, H] -> policy logits [B, A], value logits [B, bins]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.policy = Head(cfg.hidden, cfg.head_hidden, cfg.actions)
        self.value = Head(cfg.hidden, cfg.head_hidden, cfg.support_bins)

    def forward(self, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.policy(state), self.value(state)


class AfterstateDynamics(nn.Module):
    """phi: state [B, H], action one-hot [B, A] -> afterstate [B, H]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = Trunk(cfg.hidden + cfg.actions, cfg.hidden, cfg.dynamics_blocks)

    def forward(self, state: Tensor, action_onehot: Tensor) -> Tensor:
        return self.trunk(torch.cat([state, action_onehot], dim=-1))


class AfterstatePrediction(nn.Module):
    """psi: afterstate [B, H] -> chance (sigma) logits [B, K], Q logits [B, bins]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.sigma = Head(cfg.hidden, cfg.head_hidden, cfg.chance_codes)
        self.q = Head(cfg.hidden, cfg.head_hidden, cfg.support_bins)

    def forward(self, afterstate: Tensor) -> tuple[Tensor, Tensor]:
        return self.sigma(afterstate), self.q(afterstate)


class Dynamics(nn.Module):
    """g: afterstate [B, H], code one-hot [B, K] -> next state [B, H], reward logits [B, bins]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = Trunk(cfg.hidden + cfg.chance_codes, cfg.hidden, cfg.dynamics_blocks)
        self.reward = Head(cfg.hidden, cfg.head_hidden, cfg.support_bins)

    def forward(self, afterstate: Tensor, code_onehot: Tensor) -> tuple[Tensor, Tensor]:
        state = self.trunk(torch.cat([afterstate, code_onehot], dim=-1))  # [B, H]
        return state, self.reward(state)


class ChanceEncoder(nn.Module):
    """e: obs at t+1 [B, W, F] -> (code [B, K] one-hot with straight-through gradient, probs [B, K]).

    An MLP on the flattened window (W*F = 960 inputs). The window at t+1 holds bar t+1
    and the bars before it, i.e. what the chance outcome after (s_t, a_t) turned out to be.
    Forward value: exactly one-hot at argmax. Backward: the gradient of the softmax
    probs (code = onehot + (probs - probs.detach())), so the encoder is trained through
    the dynamics, and through the sigma/commitment losses via ``probs``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.window, self.features = cfg.window, cfg.input_features
        w = cfg.encoder_hidden
        self.net = nn.Sequential(
            nn.Linear(cfg.window * cfg.input_features, w),
            nn.LayerNorm(w),
            nn.ReLU(),
            nn.Linear(w, w),
            nn.LayerNorm(w),
            nn.ReLU(),
            nn.Linear(w, cfg.chance_codes),
        )

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        if obs.shape[1:] != (self.window, self.features):
            raise ValueError(
                f"chance encoder expects observations [B, {self.window}, {self.features}], got {list(obs.shape)}"
            )
        probs = torch.softmax(self.net(obs.flatten(1)), dim=-1)  # [B, K]
        onehot = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)  # [B, K]
        code = onehot + (probs - probs.detach())  # parenthesised: the forward value stays exactly one-hot
        return code, probs


# ----------------------------------------------------------------------------- the model


class StochasticMuZeroNet(nn.Module):
    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        self.representation_net = Representation(cfg)
        self.prediction_net = Prediction(cfg)
        self.afterstate_net = AfterstateDynamics(cfg)
        self.afterstate_prediction_net = AfterstatePrediction(cfg)
        self.dynamics_net = Dynamics(cfg)
        self.chance_encoder = ChanceEncoder(cfg)

    # ---- bookkeeping

    def sub_networks(self) -> dict[str, nn.Module]:
        return {
            "representation": self.representation_net,
            "prediction": self.prediction_net,
            "afterstate_dynamics": self.afterstate_net,
            "afterstate_prediction": self.afterstate_prediction_net,
            "dynamics": self.dynamics_net,
            "chance_encoder": self.chance_encoder,
        }

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per sub-network, plus "total"."""
        counts = {name: sum(p.numel() for p in m.parameters()) for name, m in self.sub_networks().items()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def to_scalar(self, logits: Tensor) -> Tensor:
        """logits [.., bins] -> expected scalar [..] (pips)."""
        return support_to_scalar(logits, self.cfg.support_max, self.cfg.h_epsilon, self.cfg.support_space)

    def to_support(self, x: Tensor) -> Tensor:
        """scalar [..] (pips) -> two-hot target probs [.., bins]."""
        return scalar_to_support(
            x, self.cfg.support_bins, self.cfg.support_max, self.cfg.h_epsilon, self.cfg.support_space
        )

    # ---- training-time raw-logit methods

    def represent(self, obs: Tensor) -> Tensor:
        """obs [B, W, F] -> state [B, H]."""
        return self.representation_net(obs)

    def predict(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """state [B, H] -> (policy_logits [B, A], value_logits [B, bins])."""
        return self.prediction_net(state)

    def afterstate(self, state: Tensor, action: Tensor) -> Tensor:
        """state [B, H], action [B] long -> afterstate [B, H]."""
        return self.afterstate_net(state, F.one_hot(action.long(), self.cfg.actions).to(state.dtype))

    def afterstate_predict(self, afterstate: Tensor) -> tuple[Tensor, Tensor]:
        """afterstate [B, H] -> (chance_logits [B, K], q_logits [B, bins])."""
        return self.afterstate_prediction_net(afterstate)

    def dynamics(self, afterstate: Tensor, code_onehot: Tensor) -> tuple[Tensor, Tensor]:
        """afterstate [B, H], code_onehot [B, K] float -> (state [B, H], reward_logits [B, bins]).

        Takes the (straight-through) one-hot from :meth:`encode_chance` so gradient
        reaches the encoder; the search passes indices via :meth:`recurrent_inference`.
        """
        return self.dynamics_net(afterstate, code_onehot)

    def encode_chance(self, obs_next: Tensor) -> tuple[Tensor, Tensor]:
        """obs at t+1 [B, W, F] -> (code_onehot [B, K] straight-through, probs [B, K])."""
        return self.chance_encoder(obs_next)

    # ---- search-time API (SearchModel)

    def initial_inference(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        state = self.represent(obs)
        policy_logits, value_logits = self.predict(state)
        return state, policy_logits, self.to_scalar(value_logits)

    def afterstate_inference(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        afterstate = self.afterstate(state, action)
        chance_logits, q_logits = self.afterstate_predict(afterstate)
        return afterstate, chance_logits, self.to_scalar(q_logits)

    def recurrent_inference(self, afterstate: Tensor, code: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        code_onehot = F.one_hot(code.long(), self.cfg.chance_codes).to(afterstate.dtype)
        state, reward_logits = self.dynamics(afterstate, code_onehot)
        policy_logits, value_logits = self.predict(state)
        reward, value = self.to_scalar(torch.stack([reward_logits, value_logits])).unbind()  # one decode for both
        return state, reward, policy_logits, value
