"""Actor-critic networks: the policy spec, an observation encoder, actor and critic trunks, the heads.

A :class:`PolicySpec` says what a policy is made of, in plain values, built from the spaces and the
config. The network is built from it, and whatever reads a policy without running it (the fast
path's allow-list, exporters) reads the spec and :meth:`ActorCritic.layers`, never private attributes.
A new policy feature is a new spec field.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import Tensor, nn

from ppokit.control.config import Activation
from ppokit.control.policy.heads import CategoricalHead, GaussianHead, MixedHead, MultiCategoricalHead
from ppokit.errors import ConfigError

HeadKind = Literal["categorical", "multi_categorical", "gaussian", "mixed"]
#: One part of a mixed (Tuple or Dict) action space: its head kind and dims, as for a whole spec.
ActionPart = tuple[str, tuple[int, ...]]


def _action_part(space: spaces.Space) -> ActionPart:
    if isinstance(space, spaces.Discrete):
        return "categorical", (int(space.n),)
    if isinstance(space, spaces.MultiDiscrete):
        return "multi_categorical", tuple(int(n) for n in np.asarray(space.nvec).ravel())
    if isinstance(space, spaces.Box):
        return "gaussian", (int(np.prod(space.shape)),)
    raise ConfigError(f"unsupported action space {space}")

log = logging.getLogger("ppokit")

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}
_ACTIVATION_FNS: dict[str, Callable[[Tensor], Tensor]] = {"tanh": torch.tanh, "relu": torch.relu, "elu": F.elu}


def is_image_space(space: spaces.Space) -> bool:
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
        #: The linear layers, input to output; each is followed by the activation.
        self.linears: tuple[nn.Linear, ...] = tuple(m for m in layers if isinstance(m, nn.Linear))
        self._activation = _ACTIVATION_FNS[activation]

    def forward(self, x: Tensor) -> Tensor:
        for linear in self.linears:
            x = self._activation(F.linear(x, linear.weight, linear.bias))
        return x


#: What images are multiplied by when ``image_scale`` is not given: uint8 values to [0, 1].
DEFAULT_IMAGE_SCALE = 1.0 / 255.0
#: Image values that never exceed this in a first rollout look like codes (MiniGrid's objects,
#: colours and states: 0-10), not pixels: divided by 255 they all but vanish.
SMALL_IMAGE_VALUES = 15


def check_image_values(spec: PolicySpec, obs: Tensor) -> None:
    """Warn once when the image values of a rollout (``[T, N, ...]`` as the policy reads them) never
    exceed :data:`SMALL_IMAGE_VALUES` while the CNN scales them by the default 1/255."""
    entries = spec.image_entries()
    values = obs.flatten(2)[..., torch.as_tensor(entries, device=obs.device)] if entries is not None else obs
    if spec.encoder == "mlp" or values.numel() == 0:
        return
    top = float(values.max())
    if top <= SMALL_IMAGE_VALUES:
        log.warning("the image values of the first rollout never exceed %g, yet image_scale, left unset, scales them by "
                    "1/255: set image_scale (e.g. 0.1 or 1.0) if they are codes rather than pixels", top)


class ImageEncoder(nn.Module):
    """A CNN chosen by the image's smaller side: the Nature-DQN CNN (Mnih et al., 2015) from 36 px (Atari),
    two 3×3 convolutions (the second of stride 2) from 5 px (MiniGrid's 7×7 view), three 2×2
    convolutions of stride 1 below that (grids of 2 to 4 cells).

    Takes images (HWC or CHW, told apart by where the 1, 3 or 4 channels are), multiplies them by
    ``scale`` (``image_scale``) and returns a 512-wide feature vector.
    """

    def __init__(self, shape: tuple[int, ...], scale: float = DEFAULT_IMAGE_SCALE) -> None:
        super().__init__()
        self.channels_last = _channels_last(shape)
        self.shape, self.scale = tuple(shape), float(scale)
        c, h, w = (shape[2], shape[0], shape[1]) if self.channels_last else shape
        if min(h, w) >= 36:
            convs = [nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                     nn.Conv2d(64, 64, 3, stride=1), nn.ReLU()]
        elif min(h, w) >= 5:
            convs = [nn.Conv2d(c, 16, 3, stride=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU()]
        elif min(h, w) >= 2:
            convs = [nn.Conv2d(c, 16, 2), nn.ReLU(), nn.Conv2d(16, 32, 2, padding=1), nn.ReLU(),
                     nn.Conv2d(32, 64, 2), nn.ReLU()]
        else:
            raise ConfigError(f"an image of shape {tuple(shape)} is too small for a CNN (2×2 pixels at least); "
                              "set network: mlp to read it as a vector")
        self.convs = nn.Sequential(*convs, nn.Flatten())
        with torch.no_grad():
            n_flat = self.convs(torch.zeros(1, c, h, w)).shape[1]
        self.fc = nn.Sequential(nn.Linear(n_flat, 512), nn.ReLU())
        self.out_features = 512

    def forward(self, obs: Tensor) -> Tensor:
        x = obs.float().reshape(-1, *self.shape)
        # The default divides, as ppokit always has: x * (1/255) can differ from x / 255 in the last bit.
        x = x / 255.0 if self.scale == DEFAULT_IMAGE_SCALE else x * self.scale
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return self.fc(self.convs(x))


class CombinedEncoder(nn.Module):
    vector_index: Tensor

    """SB3's ``CombinedExtractor`` for a flattened Dict (or Tuple) observation holding images: each
    image part (its slice of the vector, reshaped) goes through an :class:`ImageEncoder` of its own,
    the other parts as they are; the features are concatenated, image parts first in flatten order.
    """

    def __init__(self, parts: Sequence[tuple[str, int, tuple[int, ...]]], scale: float) -> None:
        super().__init__()
        self.images: list[ImageEncoder] = nn.ModuleList()  # type: ignore[assignment]  # of ImageEncoders
        self.image_slices: list[tuple[int, int]] = []
        vector: list[tuple[int, int]] = []
        offset = 0
        for _, size, shape in parts:
            if shape:
                self.images.append(ImageEncoder(shape, scale))
                self.image_slices.append((offset, size))
            else:
                vector.append((offset, size))
            offset += size
        # The non-image entries, gathered by one index (they may lie on both sides of an image).
        index = [i for start, size in vector for i in range(start, start + size)]
        self.register_buffer("vector_index", torch.as_tensor(index, dtype=torch.long), persistent=False)
        self.out_features: int = 512 * len(self.images) + len(index)

    def forward(self, obs: Tensor) -> Tensor:
        x = obs if obs.dtype.is_floating_point else obs.float()
        x = x.flatten(1)
        features = [encoder(x[:, start:start + size]) for encoder, (start, size) in zip(self.images, self.image_slices)]
        features.append(x.index_select(1, self.vector_index))
        return torch.cat(features, dim=1)


@dataclass(frozen=True)
class PolicySpec:
    """What an actor-critic is made of, in plain values."""

    #: Shape of one observation.
    obs_shape: tuple[int, ...]
    #: 'mlp' (flattened vector input), 'cnn' (the image encoder, one trunk shared by actor and critic)
    #: or 'multi' (a Dict or Tuple holding images, flattened: a CNN per image part beside the other
    #: parts, then the MLP trunk(s); see ``obs_parts``).
    encoder: Literal["mlp", "cnn", "multi"]
    #: Hidden layer widths of the MLP trunk(s) (unused with the CNN).
    hidden_sizes: tuple[int, ...]
    #: Activation of the MLP trunk(s).
    activation: Activation
    #: One trunk for actor and critic (else one each).
    shared_trunk: bool
    #: The action distribution: 'categorical' (Discrete), 'multi_categorical' (MultiDiscrete), 'gaussian'
    #: (Box), or 'mixed' (a Tuple or Dict of those: one head per part).
    head: HeadKind
    #: The number of actions (categorical), of each dimension's choices (multi_categorical), or the
    #: action dimension (gaussian).
    action_dims: tuple[int, ...]
    #: Orthogonal initialisation (gains √2 hidden, 0.01 policy head, 1 value head).
    ortho_init: bool = True
    #: Initial log standard deviation of the Gaussian head.
    log_std_init: float = 0.0
    #: The parts of a 'mixed' action space, in order (Dict: key order); () otherwise.
    action_parts: tuple[ActionPart, ...] = ()
    #: The shape of the critic's own (privileged) observation; () when it sees the actor's.
    critic_obs_shape: tuple[int, ...] = ()
    #: A recurrent core after the trunk ('lstm' or 'gru'), shared by actor and critic; None for none.
    recurrent: Literal["lstm", "gru"] | None = None
    #: Hidden size of the recurrent core.
    recurrent_size: int = 64
    #: The env marks invalid actions (a boolean per action, per MultiDiscrete choice); their
    #: probability is 0 in sampling, log-probabilities, entropy and the PPO ratio.
    action_mask: bool = False
    #: With the 'multi' encoder: each part of the flattened observation in order, ``(name, size,
    #: image shape)`` (image shape ``()`` for a vector part); () otherwise.
    obs_parts: tuple[tuple[str, int, tuple[int, ...]], ...] = ()
    #: What the CNN multiplies image values by (``image_scale``).
    image_scale: float = DEFAULT_IMAGE_SCALE

    def image_entries(self) -> np.ndarray | None:
        """Which entries of the flattened observation are image values (the 'multi' encoder); None for others."""
        if self.encoder != "multi":
            return None
        return np.concatenate([np.full(size, bool(shape)) for _, size, shape in self.obs_parts])

    @classmethod
    def from_spaces(
        cls,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        *,
        network: str = "auto",
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        shared_trunk: bool = False,
        ortho_init: bool = True,
        log_std_init: float = 0.0,
        action_mask: bool = False,
        critic_obs_shape: Sequence[int] = (),
        recurrent: str | None = None,
        recurrent_size: int = 64,
        obs_parts: Sequence[tuple[str, int, tuple[int, ...]]] = (),
        image_scale: float = DEFAULT_IMAGE_SCALE,
    ) -> PolicySpec:
        """``obs_parts``: the layout of a flattened observation holding images (see
        :func:`ppokit.control.envs.observations.observation_layout`); with it, 'auto' and 'cnn' build
        the 'multi' encoder, 'mlp' reads the whole vector with the MLP."""
        obs_shape = tuple(int(d) for d in (observation_space.shape or ()))
        multi = bool(obs_parts) and network != "mlp"
        cnn = not multi and (network == "cnn" or (network == "auto" and is_image_space(observation_space)))
        critic_shape = tuple(int(d) for d in critic_obs_shape)
        if critic_shape and recurrent:
            raise ConfigError("a critic observation of its own is not supported with a recurrent policy yet")
        if recurrent:
            shared_trunk = True  # one recurrent core for actor and critic, as CleanRL's LSTM PPO
        if critic_shape and (cnn or multi or shared_trunk):
            raise ConfigError("a critic observation of its own needs the critic's own trunk: set shared_trunk=false "
                              "(and an MLP network)")
        if cnn and len(obs_shape) != 3:
            raise ConfigError(
                f"config field 'network' = 'cnn' needs image observations of rank 3, got shape {obs_shape}"
            )
        head: HeadKind
        dims: tuple[int, ...]
        parts: tuple[ActionPart, ...] = ()
        if isinstance(action_space, (spaces.Tuple, spaces.Dict)):
            subspaces = action_space.spaces.values() if isinstance(action_space, spaces.Dict) else action_space.spaces
            parts = tuple(_action_part(s) for s in subspaces)
            head = "mixed"
            dims = (sum(1 if k == "categorical" else len(d) if k == "multi_categorical" else d[0] for k, d in parts),)
        else:
            kind, dims = _action_part(action_space)
            head = kind  # type: ignore[assignment]  # one of the HeadKind values
        return cls(
            obs_shape=obs_shape, encoder="multi" if multi else "cnn" if cnn else "mlp", hidden_sizes=tuple(hidden_sizes),
            activation=activation,  # type: ignore[arg-type]  # checked by the config
            shared_trunk=True if cnn else shared_trunk, head=head, action_dims=dims,
            ortho_init=ortho_init, log_std_init=log_std_init, action_mask=action_mask, action_parts=parts,
            critic_obs_shape=critic_shape, recurrent=recurrent,  # type: ignore[arg-type]  # checked by the config
            recurrent_size=recurrent_size,
            obs_parts=tuple((str(n), int(size), tuple(int(d) for d in shape)) for n, size, shape in obs_parts)
            if multi else (),
            image_scale=float(image_scale),
        )


@dataclass(frozen=True)
class Layers:
    """The parameters of an MLP actor-critic, layer by layer, for code that computes with them directly."""

    actor: tuple[nn.Linear, ...]
    #: None when the trunk is shared.
    critic: tuple[nn.Linear, ...] | None
    #: The policy head's linear layer (logits, or the Gaussian mean).
    head: nn.Linear
    value: nn.Linear
    #: The Gaussian head's log standard deviation; None for other heads.
    log_std: nn.Parameter | None


class ActorCritic(nn.Module):
    """Policy and value function, built from a :class:`PolicySpec`.

    ``shared_trunk=False`` (the default for control) gives the actor and the critic their own MLPs,
    as in the PPO paper's MuJoCo experiments; ``True`` shares one trunk (always the case with a CNN,
    as in the paper's Atari experiments).
    """

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__()
        self.spec = spec
        self.obs_shape = spec.obs_shape
        self.use_cnn = spec.encoder == "cnn"
        self.actor_trunk: nn.Module
        self.critic_trunk: nn.Module | None
        self.encoder: nn.Module
        if self.use_cnn:
            self.encoder = ImageEncoder(self.obs_shape, spec.image_scale)
            self.actor_trunk, self.critic_trunk = nn.Identity(), None
            actor_out = self.encoder.out_features
        else:
            # 'multi': the encoder is shared by actor and critic (SB3's share_features_extractor),
            # the MLP trunks on top of it are as for vectors.
            multi = spec.encoder == "multi"
            combined = CombinedEncoder(spec.obs_parts, spec.image_scale) if multi else None
            self.encoder = combined or nn.Flatten()
            feat = combined.out_features if combined is not None else int(np.prod(self.obs_shape))
            self.actor_trunk = MLP([feat, *spec.hidden_sizes], spec.activation)
            critic_in = int(np.prod(spec.critic_obs_shape)) if spec.critic_obs_shape else feat
            self.critic_trunk = None if spec.shared_trunk else MLP([critic_in, *spec.hidden_sizes], spec.activation)
            actor_out = spec.hidden_sizes[-1]
        self.shared_trunk = spec.shared_trunk
        self.core: nn.LSTM | nn.GRU | None = None
        if spec.recurrent is not None:
            rnn = nn.LSTM if spec.recurrent == "lstm" else nn.GRU
            self.core = rnn(actor_out, spec.recurrent_size)
            actor_out = spec.recurrent_size

        self.head: CategoricalHead | MultiCategoricalHead | GaussianHead | MixedHead
        if spec.head == "mixed":
            self.head = MixedHead(actor_out, list(spec.action_parts), spec.log_std_init)
        elif spec.head == "categorical":
            self.head = CategoricalHead(actor_out, spec.action_dims[0])
        elif spec.head == "multi_categorical":
            self.head = MultiCategoricalHead(actor_out, list(spec.action_dims))
        else:
            self.head = GaussianHead(actor_out, spec.action_dims[0], spec.log_std_init)
        self.value_head = nn.Linear(actor_out, 1)
        if spec.ortho_init:
            self._orthogonal_init()

    def layers(self) -> Layers:
        """The linear layers of an MLP policy (a CNN's encoder is not described this way)."""
        if self.spec.encoder != "mlp" or not isinstance(self.actor_trunk, MLP) or isinstance(self.head, MixedHead):
            raise TypeError("layers(): only MLP policies with one head are described layer by layer")
        critic = self.critic_trunk.linears if isinstance(self.critic_trunk, MLP) else None
        log_std = self.head.log_std if isinstance(self.head, GaussianHead) else None
        return Layers(self.actor_trunk.linears, critic, self.head.linear, self.value_head, log_std)

    def _orthogonal_init(self) -> None:
        """Orthogonal weights, zero biases; gains √2 (hidden), 0.01 (policy), 1 (value)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.orthogonal_(module.weight, math.sqrt(2))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for head in self.head.heads if isinstance(self.head, MixedHead) else [self.head]:
            nn.init.orthogonal_(head.linear.weight, 0.01)
        nn.init.orthogonal_(self.value_head.weight, 1.0)

    def _encode(self, obs: Tensor) -> Tensor:
        if self.use_cnn or self.spec.encoder == "multi":
            out: Tensor = self.encoder(obs)
            return out
        x = obs if obs.dtype.is_floating_point else obs.float()
        return x if x.dim() == 2 else x.flatten(1)

    def _features(self, obs: Tensor, critic_obs: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._encode(obs)
        actor = self.actor_trunk(x)
        return actor, self._critic_features(x, actor, critic_obs)

    def _critic_features(self, x: Tensor, actor: Tensor | None, critic_obs: Tensor | None) -> Tensor:
        if self.critic_trunk is None:
            return actor if actor is not None else self.actor_trunk(x)
        if self.spec.critic_obs_shape:
            if critic_obs is None:
                raise ValueError("this critic reads an observation of its own; pass critic_obs")
            x = self._encode(critic_obs)
        out: Tensor = self.critic_trunk(x)
        return out

    def act(self, obs: Tensor, deterministic: bool = False, mask: Tensor | None = None,
            critic_obs: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Sample (or take the mode of) an action: returns ``(action, log_prob, value)``."""
        actor, critic = self._features(obs, critic_obs)
        action, logp = self.head.sample(self.head(actor, mask), deterministic)
        return action, logp, self.value_head(critic).squeeze(-1)

    def action(self, obs: Tensor, deterministic: bool = False, mask: Tensor | None = None) -> Tensor:
        """The action of :meth:`act` alone (the critic is not run): what ``predict`` and evaluation need."""
        log_probs = self.head(self.actor_trunk(self._encode(obs)), mask)
        action, _ = self.head.sample(log_probs, deterministic)
        out: Tensor = action
        return out

    def evaluate(self, obs: Tensor, actions: Tensor, mask: Tensor | None = None,
                 critic_obs: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probability and entropy of given actions, and the value: ``(logp, entropy, value)``."""
        actor, critic = self._features(obs, critic_obs)
        logp, entropy = self.head.log_prob_entropy(self.head(actor, mask), actions)
        return logp, entropy, self.value_head(critic).squeeze(-1)

    # ---- the recurrent core ------------------------------------------------------------------
    @property
    def state_size(self) -> int:
        """Entries of the recurrent state per env: LSTM (h, c) side by side, GRU h; 0 without a core."""
        if self.spec.recurrent is None:
            return 0
        return self.spec.recurrent_size * (2 if self.spec.recurrent == "lstm" else 1)

    def initial_state(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        return torch.zeros(n, self.state_size, device=device)

    def _core_step(self, x: Tensor, state: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        """One step of the core for a batch: the state is zeroed where an episode starts."""
        assert self.core is not None
        state = state * (~starts).to(state.dtype).unsqueeze(-1)
        if isinstance(self.core, nn.LSTM):
            h, c = state.chunk(2, dim=-1)
            out, (h, c) = self.core(x.unsqueeze(0), (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()))
            return out[0], torch.cat([h[0], c[0]], dim=-1)
        out, h = self.core(x.unsqueeze(0), state.unsqueeze(0).contiguous())
        return out[0], h[0]

    def step(self, obs: Tensor, state: Tensor, starts: Tensor, mask: Tensor | None = None,
             deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One env step of a recurrent policy: ``(action, log_prob, value, new_state)``."""
        features, state = self._core_step(self.actor_trunk(self._encode(obs)), state, starts)
        action, logp = self.head.sample(self.head(features, mask), deterministic)
        return action, logp, self.value_head(features).squeeze(-1), state

    def recurrent_action(self, obs: Tensor, state: Any, episode_start: Any, mask: Tensor | None,
                         deterministic: bool) -> tuple[Tensor, Tensor]:
        """``(action, new_state)`` for ``predict``: ``state`` None starts fresh episodes (zeros);
        ``episode_start`` (default: true only without a state) marks envs whose episode begins here."""
        n, fresh = obs.shape[0], state is None
        state = self.initial_state(n, obs.device) if fresh else torch.as_tensor(state, device=obs.device)
        starts = torch.as_tensor([fresh] * n if episode_start is None else episode_start,
                                 dtype=torch.bool, device=obs.device).reshape(n)
        action, _, _, state = self.step(obs, state, starts, mask, deterministic)
        return action, state

    def step_value(self, obs: Tensor, state: Tensor, starts: Tensor) -> Tensor:
        features, _ = self._core_step(self.actor_trunk(self._encode(obs)), state, starts)
        return self.value_head(features).squeeze(-1)

    def evaluate_sequence(self, obs: Tensor, actions: Tensor, state: Tensor, starts: Tensor,
                          mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Re-run the core over whole sequences (time-major ``[T, B, ...]``) from their stored initial
        states, resetting at episode starts: ``(logp, entropy, value)``, each ``[T, B]``."""
        x = self.actor_trunk(self._encode(obs.flatten(0, 1))).unflatten(0, obs.shape[:2])
        outs = []
        for t in range(obs.shape[0]):
            out, state = self._core_step(x[t], state, starts[t])
            outs.append(out)
        features = torch.stack(outs).flatten(0, 1)
        flat_mask = None if mask is None else mask.flatten(0, 1)
        logp, entropy = self.head.log_prob_entropy(self.head(features, flat_mask), actions.flatten(0, 1))
        value = self.value_head(features).squeeze(-1)
        shape = obs.shape[:2]
        return logp.reshape(shape), entropy.reshape(shape), value.reshape(shape)

    def value(self, obs: Tensor, critic_obs: Tensor | None = None) -> Tensor:
        return self.value_head(self._critic_features(self._encode(obs), None, critic_obs)).squeeze(-1)

