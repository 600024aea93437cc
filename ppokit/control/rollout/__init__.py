"""Collecting experience: :mod:`~ppokit.control.rollout.host` (Gymnasium envs, NumPy between steps),
:mod:`~ppokit.control.rollout.device` (torch envs, nothing leaves the device),
:mod:`~ppokit.control.rollout.storage` (a rollout's buffers) and
:mod:`~ppokit.control.rollout.collectors` (which collector a run uses)."""
