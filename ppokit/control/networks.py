"""Actor-critic networks: an observation encoder, actor and critic trunks, and the heads."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
import torch.nn.functional as F
from torch import Tensor, nn

from ppokit.control.heads import CategoricalHead, GaussianHead, MultiCategoricalHead
from ppokit.errors import ConfigError

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}
_ACTIVATION_FNS = {"tanh": torch.tanh, "relu": torch.relu, "elu": F.elu}


def is_image_space(space: spaces.Box) -> bool:
    """Images: uint8 boxes of rank 3 (HWC or CHW)."""
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def _channels_last(shape: tuple[int, ...]) -> bool:
    return shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4)


class MLP(nn.Sequential):
    """Linear layers, each followed by the activation.

    It is an ``nn.Sequential`` (so the parameter names are ``0.weight``, ``2.weight``, …), but its
    forward calls ``F.linear`` and the activation directly: for 64-wide layers the per-call
    machinery of ``nn.Module`` (hooks, attribute lookups) costs about as much as the matrix products,
    and the rollout calls the policy once per step.
    """

    def __init__(self, sizes: list[int], activation: str) -> None:
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), _ACTIVATIONS[activation]()]
        super().__init__(*layers)
        self._linears = [m for m in layers if isinstance(m, nn.Linear)]
        self.activation_name = activation
        self._activation = _ACTIVATION_FNS[activation]

    def forward(self, x: Tensor) -> Tensor:
        for linear in self._linears:
            x = self._activation(F.linear(x, linear.weight, linear.bias))
        return x


class ImageEncoder(nn.Module):
    """The Nature-DQN CNN (Mnih et al., 2015) for images of 36 px and more; a small one below that.

    Takes uint8 images (HWC or CHW), scales them to [0, 1] and returns a 512-wide feature vector.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.channels_last = _channels_last(shape)
        c, h, w = (shape[2], shape[0], shape[1]) if self.channels_last else shape
        if min(h, w) >= 36:
            convs = [nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                     nn.Conv2d(64, 64, 3, stride=1), nn.ReLU()]
        else:
            convs = [nn.Conv2d(c, 16, 3, stride=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU()]
        self.convs = nn.Sequential(*convs, nn.Flatten())
        with torch.no_grad():
            n_flat = self.convs(torch.zeros(1, c, h, w)).shape[1]
        self.fc = nn.Sequential(nn.Linear(n_flat, 512), nn.ReLU())
        self.out_features = 512

    def forward(self, obs: Tensor) -> Tensor:
        x = obs.float() / 255.0
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return self.fc(self.convs(x))


class ActorCritic(nn.Module):
    """Policy and value function for one observation space and one action space.

    ``shared_trunk=False`` (the default for control) gives the actor and the critic their own MLPs,
    as in the PPO paper's MuJoCo experiments; ``True`` shares one trunk (always the case with a CNN,
    as in the paper's Atari experiments).
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        action_space: spaces.Space,
        *,
        network: str = "auto",
        hidden_sizes: list[int] | None = None,
        activation: str = "tanh",
        shared_trunk: bool = False,
        ortho_init: bool = True,
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_sizes = list(hidden_sizes or [64, 64])
        use_cnn = network == "cnn" or (network == "auto" and is_image_space(observation_space))
        if use_cnn and len(observation_space.shape) != 3:
            raise ConfigError(
                f"config field 'network' = 'cnn' needs image observations of rank 3, got shape "
                f"{observation_space.shape}"
            )
        self.obs_shape = tuple(observation_space.shape)
        self.use_cnn = use_cnn
        if use_cnn:
            self.encoder: nn.Module = ImageEncoder(self.obs_shape)
            feat = self.encoder.out_features
            shared_trunk = True
            self.actor_trunk: nn.Module = nn.Identity()
            self.critic_trunk: nn.Module | None = None
            actor_out = feat
        else:
            self.encoder = nn.Flatten()
            feat = int(np.prod(self.obs_shape))
            self.actor_trunk = MLP([feat, *hidden_sizes], activation)
            self.critic_trunk = None if shared_trunk else MLP([feat, *hidden_sizes], activation)
            actor_out = hidden_sizes[-1]
        self.shared_trunk = shared_trunk

        if isinstance(action_space, spaces.Discrete):
            self.head: nn.Module = CategoricalHead(actor_out, int(action_space.n))
        elif isinstance(action_space, spaces.MultiDiscrete):
            self.head = MultiCategoricalHead(actor_out, [int(n) for n in np.asarray(action_space.nvec).ravel()])
        elif isinstance(action_space, spaces.Box):
            self.head = GaussianHead(actor_out, int(np.prod(action_space.shape)), log_std_init)
        else:  # checked earlier with a friendlier message; kept as a guard for API users
            raise ConfigError(f"unsupported action space {action_space}")
        self.value_head = nn.Linear(actor_out, 1)
        if ortho_init:
            self._orthogonal_init()

    def _orthogonal_init(self) -> None:
        """Orthogonal weights, zero biases; gains √2 (hidden), 0.01 (policy), 1 (value)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.orthogonal_(module.weight, math.sqrt(2))
                nn.init.zeros_(module.bias)
        nn.init.orthogonal_(self.head.linear.weight, 0.01)
        nn.init.orthogonal_(self.value_head.weight, 1.0)

    def _encode(self, obs: Tensor) -> Tensor:
        if self.use_cnn:
            return self.encoder(obs)
        return obs if obs.dim() == 2 else obs.flatten(1)

    def _features(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        x = self._encode(obs)
        actor = self.actor_trunk(x)
        critic = actor if self.critic_trunk is None else self.critic_trunk(x)
        return actor, critic

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Sample (or take the mode of) an action: returns ``(action, log_prob, value)``."""
        actor, critic = self._features(obs)
        action, logp = self.head.sample(self.head(actor), deterministic)
        return action, logp, self.value_head(critic).squeeze(-1)

    def evaluate(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probability and entropy of given actions, and the value: ``(logp, entropy, value)``."""
        actor, critic = self._features(obs)
        logp, entropy = self.head.log_prob_entropy(self.head(actor), actions)
        return logp, entropy, self.value_head(critic).squeeze(-1)

    def value(self, obs: Tensor) -> Tensor:
        x = self._encode(obs)
        critic = self.actor_trunk(x) if self.critic_trunk is None else self.critic_trunk(x)
        return self.value_head(critic).squeeze(-1)

    def architecture(self) -> dict[str, Any]:
        return {"shared_trunk": self.shared_trunk, "head": type(self.head).__name__}
