"""Configuration of a PPO run on a Gymnasium environment.

The defaults are the general ones, for an env with no preset: chosen from a sweep over a public
suite of discrete and continuous tasks at 100k-300k steps, side by side with Stable-Baselines3's
defaults (BENCHMARKS.md, "Defaults without a preset"). They are the PPO paper's MuJoCo settings as
CleanRL and SB3 adopt them (2,048 steps per update in minibatches of 64, 10 epochs, Adam at 3e-4)
with four envs and running observation and reward normalisation, which the sweep found to help on
every task. Per-environment presets (``ppokit presets``) override them with tuned values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from ppokit.config_fields import shared
from ppokit.configuration import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    Rule,
    adapt,
    doc,
    given_fields,
    nearest_divisor,
    records_given,
    validate,
)
from ppokit.core.choices import DistBackend, Loss, OnNonFinite, ScheduleKind
from ppokit.errors import ConfigError
from ppokit.io.trackers import TrackerName

#: The entropy bonus of a config that leaves it to the action space, when every action is discrete.
DISCRETE_ENT_COEF = 0.01

#: Fields a resumed run may change: its budget, and how it is watched, evaluated and saved. Every
#: other field shaped the run so far; changing it on resume is refused (it would silently train a
#: different run, or re-save the model without state it needs).
RESUMABLE_FIELDS = frozenset({
    "total_steps", "run_dir", "progress", "tensorboard", "checkpoint_every", "checkpoint_minutes",
    "keep_checkpoints", "eval_every", "eval_episodes", "eval_deterministic", "stop_at_return", "on_nonfinite",
    "device", "torch_threads", "trackers", "dist_backend", "dist_timeout",
})

Vectorization = Literal["auto", "sync", "async", "envpool"]
#: Which preprocessing wraps the envs made from an id (ppokit.control.envs.atari).
EnvPreprocessing = Literal["auto", "none", "atari"]
Network = Literal["auto", "mlp", "cnn"]
Activation = Literal["tanh", "relu", "elu"]
#: Who runs the rollout's forward pass and the update: 'torch' (the reference), 'numpy' (the fast
#: path, ppokit.control.fast), or 'auto' (the fast path wherever its allow-list accepts the run).
UpdateBackend = Literal["auto", "torch", "numpy"]

#: Env steps between evaluations that ``stop_at_return`` asks for when ``eval_every`` is left to it.
STOP_EVAL_MIN_STEPS = 1024


@records_given
@dataclass
class ControlConfig:
    """Every knob of a control run (PPO on a Gymnasium env). Built from a preset, a YAML file,
    ``--set`` overrides or code."""

    # --- environment ---
    env_id: str = doc("Gymnasium env id, 'module:EnvClass', or 'module:Env-v0' to import then make.", default="CartPole-v1", rule=Rule(lambda v: bool(v.strip()), "a non-empty env id"))
    env_kwargs: dict[str, Any] = doc("Keyword arguments passed to the environment constructor.", default_factory=dict)
    num_envs: int = doc("Number of parallel environments in the vector env (of each process, or of all of them: num_envs_scope).", default=4, rule=AT_LEAST_1)
    num_envs_scope: Literal["rank", "global"] = doc("With several processes (--nproc, torchrun): 'rank' runs num_envs envs in each (the batch grows with the processes), 'global' splits num_envs among them (the batch and minibatch size stay those of one process).", default="rank")
    vectorization: Vectorization = doc("'auto' (native vector env if the env has one, else sync), 'sync', 'async', or 'envpool' (EnvPool's C++ envs: Atari, classic control, MuJoCo; pip install 'ppokit[envpool]').", default="auto")
    env_preprocessing: EnvPreprocessing = doc("'auto' (the standard Atari stack for ale-py ids: no-op reset, 4-frame skip with max-pool, episodic life, FIRE reset, sign-clipped rewards, 84x84 grey, 4 frames stacked; nothing for other ids), 'atari' (that stack, or an error) or 'none' (the env as made).", default="auto")
    env_wrappers: list[Any] = doc("Gymnasium wrappers around every env ppokit makes (training, evaluation, video), innermost first: each 'module:Wrapper' or {'module:Wrapper': {kwargs}}; read back from a saved file, a wrapper outside gymnasium's own modules needs --trust.", default_factory=list, rule=Rule(lambda v: all(isinstance(w, str) and ":" in w or isinstance(w, dict) and len(w) == 1 and all(isinstance(k, str) and ":" in k and isinstance(a, (dict, type(None))) for k, a in w.items()) for w in v), "a list of 'module:Wrapper' or {'module:Wrapper': {kwargs}}"))
    env_spec: dict[str, Any] | None = doc("Recorded for an env object given in code: the Gymnasium EnvSpec (EnvSpec.to_json) that rebuilds it, time limit and wrappers included; evaluation and resume make the env from it (gym.make) when its id is env_id. null: made from env_id.", default=None, rule=Rule(lambda v: isinstance(v.get("id"), str) and isinstance(v.get("entry_point"), str), "an EnvSpec as JSON (with id and entry_point)"))
    total_steps: int = doc("Environment steps to train for, summed over all parallel envs.", default=1_000_000, rule=AT_LEAST_1)
    seed: int = shared("seed", default=1)

    # --- rollout and advantages ---
    num_steps: int = doc("Steps collected per env per rollout; batch size = num_envs * num_steps.", default=512, rule=AT_LEAST_1)
    gamma: float = shared("gamma", default=0.99)
    gae_lambda: float = shared("gae_lambda", default=0.95)

    # --- optimisation ---
    num_epochs: int = shared("num_epochs", default=10)
    num_minibatches: int = shared("num_minibatches", default=32)
    learning_rate: float = shared("learning_rate", default=3e-4)
    lr_schedule: ScheduleKind = shared("lr_schedule", default="linear")
    adam_eps: float = doc("Adam epsilon.", default=1e-5, rule=POSITIVE)
    max_grad_norm: float = shared("max_grad_norm", default=0.5)
    whiten_advantages: bool = shared("whiten_advantages", default=True)

    # --- the objective ---
    loss: Loss = doc("'clip' (PPO-Clip) or 'penalty' (PPO-Penalty, r·A − β·KL).", default="clip")
    clip_range: float = shared("clip_range", default=0.2)
    clip_schedule: ScheduleKind = doc("'constant' or 'linear' (anneal ε to 0).", default="constant")
    adaptive_clip: bool = doc("Adapt ε after each update to keep the KL near kl_target.", default=False)
    clip_range_vf: float | None = shared("clip_range_vf", default=None)
    vf_coef: float = shared("vf_coef", default=0.5)
    ent_coef: float | None = shared("ent_coef", default=None)
    kl_coef: float = shared("kl_coef", default=1.0)
    adaptive_kl: bool = shared("adaptive_kl", default=True)
    kl_target: float = shared("kl_target", default=0.01)
    target_kl: float | None = shared("target_kl", default=None)

    # --- the network ---
    network: Network = doc("'auto' (CNN for image observations, else MLP), 'mlp' or 'cnn'.", default="auto")
    hidden_sizes: list[int] = doc("Hidden layer widths of the MLP trunk(s).", default_factory=lambda: [64, 64], rule=Rule(lambda v: bool(v) and all(h >= 1 for h in v), "a non-empty list of positive widths"))
    activation: Activation = doc("Activation of the MLP trunk(s).", default="tanh")
    shared_trunk: bool = doc("One trunk for actor and critic (else separate networks).", default=False)
    ortho_init: bool = doc("Orthogonal init: gain √2 hidden, 0.01 policy head, 1 value head.", default=True)
    recurrent: Literal["lstm", "gru"] | None = doc("A recurrent core ('lstm' or 'gru') after the MLP trunk, shared by actor and critic; its state is carried through rollouts and reset at episode starts. null: none.", default=None)
    recurrent_size: int = doc("Hidden size of the recurrent core.", default=64, rule=AT_LEAST_1)
    log_std_init: float = doc("Initial log standard deviation of the Gaussian head (Box actions).", default=0.0)
    image_scale: float | None = doc("What the CNN multiplies image values by (plain images and images inside a Dict observation). null: 1/255 (uint8 0-255 to [0, 1]), recorded as the number; small codes such as MiniGrid's 0-10 are better served by 0.1 or 1.", default=None, rule=POSITIVE)
    text_observations: Literal["drop", "refuse"] = doc("A Dict observation's key holding text (Gymnasium's Text, MiniGrid's mission): 'drop' leaves it out of what the policy sees (with a notice naming it), 'refuse' stops with an error.", default="drop")

    # --- normalisation ---
    normalize_obs: bool = doc("Running mean/std observation normalisation (saved with the policy; image observations are never normalised).", default=True)
    normalize_reward: bool = doc("Scale rewards by the running std of the discounted return.", default=True)
    clip_obs: float = doc("Clip normalised observations to ±this.", default=10.0, rule=POSITIVE)
    clip_reward: float = doc("Clip scaled rewards to ±this.", default=10.0, rule=POSITIVE)

    # --- runtime and output ---
    device: str = shared("device", default="cpu")
    action_mask_key: str = doc("Where the env gives invalid-action masks: this key of each step's info, or of a Dict observation; an action_masks() method of the env is read too (docs/tutorials/masks-and-recurrence.md).", default="action_mask")
    update_backend: UpdateBackend = doc("'auto' (the NumPy fast path where it applies: MLP policies with categorical or Gaussian heads on a CPU), 'torch' (always the reference) or 'numpy' (the fast path; an error where it cannot apply).", default="auto")
    dist_backend: DistBackend = shared("dist_backend", default="auto")
    dist_timeout: float = shared("dist_timeout", default=600.0)
    torch_threads: int = shared("torch_threads", default=1)
    run_dir: str | None = shared("run_dir", default=None)
    checkpoint_every: int = shared("checkpoint_every", default=0)
    checkpoint_minutes: float = shared("checkpoint_minutes", default=10.0)
    keep_checkpoints: int = shared("keep_checkpoints", default=3)
    eval_every: int = shared("eval_every", default=0)
    eval_episodes: int = doc("Episodes per evaluation (periodic, and the final one written to eval.json; 0 skips the final one).", default=20, rule=NON_NEGATIVE)
    stop_at_return: float | None = doc("Stop once an evaluation's mean return reaches this, saving that policy and its eval.json; null disables.", default=None)
    on_nonfinite: OnNonFinite = shared("on_nonfinite", default="stop")
    eval_deterministic: bool = doc("Evaluate with the mode of the policy rather than samples.", default=True)
    tensorboard: bool = shared("tensorboard", default=True)
    trackers: list[TrackerName] = shared("trackers", default_factory=list)
    progress: bool = shared("progress", default=True)

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    def global_batch_size(self, world_size: int = 1) -> int:
        """Env steps per update over ``world_size`` processes (see ``num_envs_scope``)."""
        return self.batch_size * world_size if self.num_envs_scope == "rank" else self.batch_size

    def steps_trained(self, total_steps: int | None = None, done: int = 0, world_size: int = 1) -> int:
        """The env steps a run to ``total_steps`` (default: the config's) will really take, from
        ``done``: whole rollouts only, since a partial one would be a batch of another size."""
        total = self.total_steps if total_steps is None else total_steps
        batch = self.global_batch_size(world_size)
        return done + max(0, total - done) // batch * batch

    def rounding_note(self, world_size: int = 1) -> str | None:
        """What a ``total_steps`` that is not a whole number of rollouts means, or None."""
        trained = self.steps_trained(world_size=world_size)
        if trained == self.total_steps:
            return None
        batch = (f"num_envs * num_steps = {self.batch_size}" if world_size == 1 else
                 f"{self.global_batch_size(world_size)} steps over {world_size} processes")
        return f"total_steps = {self.total_steps} is not a whole number of rollouts ({batch}): {trained} steps will be trained"

    def for_actions(self, discrete: bool) -> ControlConfig:
        """This config with the fields left to the action space (null) filled in: what the run uses,
        and what its config.yaml and checkpoints record."""
        if self.ent_coef is not None:
            return self
        return dataclasses.replace(self, ent_coef=DISCRETE_ENT_COEF if discrete else 0.0)

    def advice(self) -> list[str]:
        """Settings that are valid but make training unable to do what was probably meant."""
        notes = []
        if self.minibatch_size == 1:
            notes.append("minibatches of 1 sample (num_minibatches = the batch size): "
                         + ("whitening one advantage gives 0, so the policy cannot learn; lower num_minibatches"
                            if self.whiten_advantages else "each step follows one sample; lower num_minibatches"))
        return notes

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"config field {name!r} = {getattr(self, name)!r} is invalid: {allowed}")

        validate(self)  # each field's type, choices and rule; what follows concerns several fields
        self._adapt_to_given()
        if self.adaptive_clip and self.clip_schedule != "constant":
            raise bad("clip_schedule", "adaptive_clip sets ε itself; use clip_schedule='constant' with it")
        if self.recurrent is not None:
            if self.num_envs % self.num_minibatches:
                raise bad("num_minibatches", f"must divide num_envs = {self.num_envs} with a recurrent policy "
                          "(its minibatches are whole env sequences); you set both (leave one unset to fit it)")
        if self.batch_size % self.num_minibatches != 0:
            raise ConfigError(
                f"config field 'num_minibatches' = {self.num_minibatches} does not divide the batch "
                f"size num_envs * num_steps = {self.num_envs} * {self.num_steps} = {self.batch_size}; you set "
                "them all (leave num_minibatches unset to fit it)"
            )
        if self.total_steps < self.batch_size:
            raise ConfigError(
                f"config field 'total_steps' = {self.total_steps} is less than one rollout "
                f"(num_envs * num_steps = {self.num_envs} * {self.num_steps} = {self.batch_size})"
            )
        if self.eval_every and self.eval_episodes < 1:
            raise bad("eval_episodes", "must be at least 1 when eval_every is set")
        if self.stop_at_return is not None and not self.eval_every:
            raise bad("stop_at_return", "needs periodic evaluation: set eval_every (updates between evaluations)")

    def _adapt_to_given(self) -> None:
        """Fit the fields the user left to the defaults or a preset to the ones they set, where the
        two would conflict; a conflict between fields the user set is refused by the checks after.
        Each change is noted (``configuration.adapted_notes``) and recorded in config.yaml."""
        given = given_fields(self)
        if self.recurrent is not None and self.num_envs % self.num_minibatches:
            # A recurrent policy's minibatches are whole env sequences.
            if "num_minibatches" not in given:
                adapt(self, "num_minibatches", max(d for d in range(1, self.num_envs + 1)
                                                   if self.num_envs % d == 0 and d <= self.num_minibatches),
                      f"a recurrent policy's minibatches are whole env sequences, so it must divide num_envs = {self.num_envs}")
            elif "num_envs" not in given:
                adapt(self, "num_envs", -(-self.num_envs // self.num_minibatches) * self.num_minibatches,
                      f"a recurrent policy's minibatches are whole env sequences: num_minibatches = "
                      f"{self.num_minibatches} must divide it")
        if self.total_steps < self.batch_size and "num_steps" not in given and self.total_steps >= self.num_envs:
            adapt(self, "num_steps", self.total_steps // self.num_envs,
                  f"one rollout of num_envs = {self.num_envs} envs must fit in total_steps = {self.total_steps}")
        if self.batch_size % self.num_minibatches:
            if "num_minibatches" not in given and not (self.recurrent is not None and "num_envs" in given):
                adapt(self, "num_minibatches", nearest_divisor(self.batch_size, self.num_minibatches),
                      f"it must divide the batch, num_envs * num_steps = {self.batch_size}")
            elif "num_steps" not in given:
                step = self.num_minibatches // math.gcd(self.num_minibatches, self.num_envs)
                down = self.num_steps // step * step
                fits = self.num_envs * (down + step) <= self.total_steps or down < step
                adapt(self, "num_steps", down + step if fits else down,
                      f"num_envs * num_steps must be a multiple of num_minibatches = {self.num_minibatches}")
            elif "num_envs" not in given:
                step = self.num_minibatches // math.gcd(self.num_minibatches, self.num_steps)
                adapt(self, "num_envs", -(-self.num_envs // step) * step,
                      f"num_envs * num_steps must be a multiple of num_minibatches = {self.num_minibatches}")
        if self.adaptive_clip and self.clip_schedule != "constant" and "clip_schedule" not in given:
            adapt(self, "clip_schedule", "constant", "adaptive_clip sets the clip range itself")
        if self.stop_at_return is not None and not self.eval_every and "eval_every" not in given:
            adapt(self, "eval_every", max(1, math.ceil(STOP_EVAL_MIN_STEPS / self.batch_size)),
                  f"stop_at_return needs periodic evaluation (at least every {STOP_EVAL_MIN_STEPS} env steps)")
