"""Language models: :mod:`~ppokit.rlhf.models.loading` (models, tokenizers, scalar heads),
:mod:`~ppokit.rlhf.models.generation`, :mod:`~ppokit.rlhf.models.precision`,
:mod:`~ppokit.rlhf.models.offload`, :mod:`~ppokit.rlhf.models.recompute` (gradient checkpointing that
keeps the KV cache) and :mod:`~ppokit.rlhf.models.sharding` (FSDP)."""
