"""A trained policy as one file that runs without ppokit: TorchScript or ONNX.

The exported function is the deterministic policy of :meth:`PPO.predict`, end to end: it takes the
observations as the policy reads them (a batch; Dict, Tuple and Discrete observations flattened with
``gymnasium.spaces.flatten``, images inside them included as float32 values, plain images as uint8), applies the saved observation normalisation (mean,
std and the ``clip_obs`` clip folded in as constants), runs the actor, and returns the actions the
env takes (Box actions clipped to their bounds, Discrete and MultiDiscrete ones with their ``start``
added). Inputs and outputs, by name (ONNX) or position (TorchScript):

* ``obs`` → ``action``; mixed (Tuple or Dict) actions give one output per part, ``action_<key>`` for a
  Dict (in the space's key order) and ``action_<i>`` for a Tuple, each in that part's own format;
* with an action mask: ``obs, action_mask`` (bool, one per action; true = allowed) → ``action``;
* a recurrent policy: ``obs, [action_mask,] state, episode_start`` → ``action, new_state``. ``state`` is
  float32 ``[batch, state_size]`` (zeros for a fresh episode; LSTM ``h`` and ``c`` side by side),
  ``episode_start`` bool ``[batch]`` (true where an episode begins: the state is reset there);
* a multi-agent group's shared policy that reads its agents' index (``agent_id``) takes
  ``obs, agent_id, ...``: ``agent_id`` float32 ``[batch, agents in the group]``, the agent's one-hot
  index in its group, appended to the normalised observation as in training.

:func:`export_policy` exports a :class:`~ppokit.control.agent.PPO`; :func:`export_parts` any policy
given by its :class:`PolicyParts` (a multi-agent group's, one file per group).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from ppokit.control.policy.actions import action_width
from ppokit.control.policy.networks import ActorCritic
from ppokit.core.running_stats import RunningMeanStd
from ppokit.errors import ConfigError
from ppokit.io.atomic import current_umask, refuse_non_regular, reported_os_errors
from ppokit.io.outputs import check_output

if TYPE_CHECKING:
    from ppokit.control.agent import PPO

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[Format, ...] = ("onnx", "torchscript")


@dataclass
class PolicyParts:
    """What an exported file is made of: the policy and what it reads and returns."""

    policy: ActorCritic
    #: What the policy reads (the observation reader's space: images as uint8, the rest flattened).
    observation_space: spaces.Space
    action_space: spaces.Space
    obs_rms: RunningMeanStd | None
    clip_obs: float
    #: Size of the one-hot agent index appended to the normalised observation (0: none).
    agent_ids: int = 0

    @classmethod
    def of(cls, agent: PPO) -> PolicyParts:
        return cls(agent.policy, agent.observation_space, agent.action_space, agent.obs_rms,
                   float(agent.config.clip_obs))


def input_names(action_mask: bool, recurrent: bool, agent_ids: int = 0) -> list[str]:
    """The exported file's inputs, in order (see the module doc)."""
    return (["obs"] + ["agent_id"] * bool(agent_ids) + ["action_mask"] * action_mask
            + ["state", "episode_start"] * recurrent)


class DeterministicPolicy(nn.Module):
    """Observation batch → env actions, with normalisation and action bounds inside (see module doc)."""

    obs_mean: Tensor
    obs_keep: Tensor
    obs_inv_std: Tensor
    low: Tensor
    high: Tensor
    start: Tensor

    def __init__(self, parts: PolicyParts, action_mask: bool) -> None:
        super().__init__()
        space = parts.action_space
        self.mixed = isinstance(space, (spaces.Tuple, spaces.Dict))
        #: (output name, space) of each action part: the space itself unless it is a Tuple or Dict.
        self.parts: list[tuple[str, spaces.Space]] = [("action", space)]
        if isinstance(space, spaces.Dict):
            self.parts = [(f"action_{key}", part) for key, part in space.spaces.items()]
        elif isinstance(space, spaces.Tuple):
            self.parts = [(f"action_{i}", part) for i, part in enumerate(space.spaces)]
        for _, part in self.parts:
            if not isinstance(part, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete)):
                raise ConfigError(f"export: the action space {space} is not supported (Box, Discrete and "
                                  "MultiDiscrete, and Tuples or Dicts of them, are)")
        if action_mask and any(isinstance(part, spaces.Box) for _, part in self.parts):
            raise ConfigError("export: an action mask needs Discrete or MultiDiscrete actions")
        # A frozen CPU copy: exporting leaves the agent's own policy (device, training mode) as it was.
        self.policy = copy.deepcopy(parts.policy).to("cpu").eval().requires_grad_(False)
        self.recurrent = parts.policy.core is not None
        self.action_mask = action_mask
        self.image = parts.observation_space.dtype == np.uint8
        self.clip_obs = float(parts.clip_obs)
        self.agent_ids = parts.agent_ids
        rms = parts.obs_rms
        self.normalize = rms is not None and not self.image
        if rms is not None:
            # RunningMeanStd.normalize_array's float64 statistics, rounded once to float32.
            var = np.asarray(rms.var, dtype=np.float64)
            self.register_buffer("obs_mean", torch.as_tensor(np.asarray(rms.mean, dtype=np.float32)))
            self.register_buffer("obs_inv_std", torch.as_tensor((1.0 / np.sqrt(var + 1e-8)).astype(np.float32)))
        #: Images inside a Dict observation: their entries of the flat vector pass unnormalised (the CNN scales them).
        self.keep = rms is not None and rms.keep is not None
        if rms is not None and rms.keep is not None:
            self.register_buffer("obs_keep", torch.as_tensor(rms.keep))
        self.widths = [action_width(part) for _, part in self.parts]
        for i, (_, part) in enumerate(self.parts):
            if isinstance(part, spaces.Box):
                self.register_buffer(f"low_{i}", torch.as_tensor(part.low.reshape(-1), dtype=torch.float32))
                self.register_buffer(f"high_{i}", torch.as_tensor(part.high.reshape(-1), dtype=torch.float32))
            elif isinstance(part, (spaces.Discrete, spaces.MultiDiscrete)):
                self.register_buffer(f"start_{i}", torch.as_tensor(np.asarray(part.start), dtype=torch.int64))

    def act(self, obs: Tensor, mask: Tensor | None = None, state: Tensor | None = None,
            starts: Tensor | None = None, ids: Tensor | None = None) -> Any:
        x = obs
        if self.normalize:
            x = ((obs.float() - self.obs_mean) * self.obs_inv_std).clamp(-self.clip_obs, self.clip_obs)
            if self.keep:
                x = torch.where(self.obs_keep, obs.float(), x)
        elif not self.image:
            x = obs.float()
        if ids is not None:
            x = torch.cat([x.reshape(x.shape[0], -1), ids.float()], dim=1)
        if state is not None and starts is not None:
            action, _, _, state = self.policy.step(x, state, starts.bool(), mask, True)
            return (*self._to_env(action), state)
        actions = self._to_env(self.policy.action(x, True, mask))
        return actions if self.mixed else actions[0]

    def _to_env(self, action: Tensor) -> tuple[Tensor, ...]:
        """The policy's action (mixed: the parts side by side in one float vector) as each part's env format."""
        pieces = action.split(self.widths, dim=-1) if self.mixed else (action,)
        out = []
        for i, ((_, part), piece) in enumerate(zip(self.parts, pieces)):
            if isinstance(part, spaces.Box):
                bounded = torch.minimum(torch.maximum(piece, getattr(self, f"low_{i}")), getattr(self, f"high_{i}"))
                out.append(bounded.reshape(-1, *part.shape))
            else:
                whole = piece.squeeze(-1) if self.mixed and isinstance(part, spaces.Discrete) else piece
                out.append(whole.long() + getattr(self, f"start_{i}"))
        return tuple(out)

    def example_inputs(self, parts: PolicyParts, batch: int = 2) -> tuple[Tensor, ...]:
        space = parts.observation_space
        obs = torch.as_tensor(np.stack([space.sample() for _ in range(batch)]))
        inputs = [obs if self.image else obs.float()]
        if self.agent_ids:
            inputs.append(torch.eye(self.agent_ids)[torch.arange(batch) % self.agent_ids])
        if self.action_mask:
            inputs.append(torch.ones(batch, sum(self.policy.spec.action_dims), dtype=torch.bool))
        if self.recurrent:
            inputs += [self.policy.initial_state(batch), torch.ones(batch, dtype=torch.bool)]
        return tuple(inputs)

    def input_names(self) -> list[str]:
        return input_names(self.action_mask, self.recurrent, self.agent_ids)

    def output_names(self) -> list[str]:
        return [name for name, _ in self.parts] + ["new_state"] * self.recurrent


# One forward signature per layout: the exporters trace fixed arguments, not optional ones.
class _Plain(DeterministicPolicy):
    def forward(self, obs: Tensor) -> Any:
        return self.act(obs)


class _Masked(DeterministicPolicy):
    def forward(self, obs: Tensor, action_mask: Tensor) -> Any:
        return self.act(obs, action_mask)


class _Recurrent(DeterministicPolicy):
    def forward(self, obs: Tensor, state: Tensor, episode_start: Tensor) -> Any:
        return self.act(obs, None, state, episode_start)


class _MaskedRecurrent(DeterministicPolicy):
    def forward(self, obs: Tensor, action_mask: Tensor, state: Tensor, episode_start: Tensor) -> Any:
        return self.act(obs, action_mask, state, episode_start)


# The same, with a shared multi-agent policy's one-hot agent index after the observation.
class _Ids(DeterministicPolicy):
    def forward(self, obs: Tensor, agent_id: Tensor) -> Any:
        return self.act(obs, ids=agent_id)


class _MaskedIds(DeterministicPolicy):
    def forward(self, obs: Tensor, agent_id: Tensor, action_mask: Tensor) -> Any:
        return self.act(obs, action_mask, ids=agent_id)


class _RecurrentIds(DeterministicPolicy):
    def forward(self, obs: Tensor, agent_id: Tensor, state: Tensor, episode_start: Tensor) -> Any:
        return self.act(obs, None, state, episode_start, ids=agent_id)


class _MaskedRecurrentIds(DeterministicPolicy):
    def forward(self, obs: Tensor, agent_id: Tensor, action_mask: Tensor, state: Tensor, episode_start: Tensor) -> Any:
        return self.act(obs, action_mask, state, episode_start, ids=agent_id)


#: The layout of each (action mask, recurrent, agent index) combination.
LAYOUTS: dict[tuple[bool, bool, bool], type[DeterministicPolicy]] = {
    (False, False, False): _Plain, (True, False, False): _Masked, (False, True, False): _Recurrent,
    (True, True, False): _MaskedRecurrent, (False, False, True): _Ids, (True, False, True): _MaskedIds,
    (False, True, True): _RecurrentIds, (True, True, True): _MaskedRecurrentIds,
}


def export_policy(agent: PPO, path: str | Path, fmt: Format, action_mask: bool | None = None, *,
                  overwrite: bool = True, flag: str = "path") -> Path:
    """Write ``agent``'s deterministic policy to ``path`` as ``fmt`` (see the module doc); returns the path.

    ``action_mask``: give the file a mask input (default: when the policy reads masks from its
    observations; pass True for masks that the env gave in ``info``). ``path`` is checked first
    (:func:`ppokit.io.outputs.check_output`): never a device, FIFO, link or directory, nor inside a
    run's or a saved model's directories; an existing file is replaced only with ``overwrite``
    (the default here; ``ppokit export`` asks for ``--overwrite``). ``flag``: how errors name the path."""
    return export_parts(PolicyParts.of(agent), path, fmt, action_mask, overwrite=overwrite, flag=flag)


def export_parts(parts: PolicyParts, path: str | Path, fmt: Format, action_mask: bool | None = None, *,
                 overwrite: bool = True, flag: str = "path") -> Path:
    """:func:`export_policy` of the policy ``parts`` describe."""
    if fmt not in FORMATS:
        raise ConfigError(f"export: unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as err:
            raise ConfigError(f"export to ONNX needs onnx and onnxscript: pip install 'ppokit[export]' ({err})") from None
    target = check_output(path, overwrite=overwrite, flag=flag)
    mask = parts.policy.spec.action_mask if action_mask is None else action_mask
    module = LAYOUTS[(mask, parts.policy.core is not None, parts.agent_ids > 0)](parts, mask)
    inputs = module.example_inputs(parts)
    with reported_os_errors(path):
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written to a fresh name beside the target and renamed over it: a failed export leaves any
        # earlier file whole, and no file of the user's is ever taken for the scratch file.
        fd, scratch = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; the file is for the user to share
        os.close(fd)
    partial = Path(scratch)
    try:
        _write(module, inputs, fmt, partial)
        with reported_os_errors(path):
            refuse_non_regular(target)  # a FIFO made at the path while the policy was being written
            os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return Path(path)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """No warnings and no log records below ERROR while the exporter runs: torch.onnx and onnxscript
    log their passes (INFO, through the CLI's handler as if they were ppokit's lines) and warn about
    optional packages (torchvision ops it skips), none of which says anything about the file written.
    Errors still show; torch marks TorchScript deprecated in favour of torch.export, but its files
    still load everywhere."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)  # every logger, torch's own handlers included
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(before)


def _write(module: DeterministicPolicy, inputs: tuple[Tensor, ...], fmt: Format, partial: Path) -> None:
    with torch.no_grad(), _quiet_exporter():
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, inputs, check_trace=False), str(partial))
        else:
            batch = torch.export.Dim("batch")
            program = torch.onnx.export(module, inputs, dynamo=True, input_names=module.input_names(),
                                        output_names=module.output_names(),
                                        dynamic_shapes=tuple({0: batch} for _ in inputs), verbose=False)
            assert program is not None
            program.save(str(partial))
