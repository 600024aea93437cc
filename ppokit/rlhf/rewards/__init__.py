"""Where RLHF rewards come from: :mod:`~ppokit.rlhf.rewards.sources` (reward models, the weighted sum),
:mod:`~ppokit.rlhf.rewards.functions` (Python callables), :mod:`~ppokit.rlhf.rewards.remote` (HTTP
reward servers) and :mod:`~ppokit.rlhf.rewards.server` (``ppokit rlhf serve-reward``)."""
