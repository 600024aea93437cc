"""Sharing a trained run: ``ppokit package`` (:mod:`~ppokit.hub.package`), a directory ready for the
Hugging Face Hub, with its model card (:mod:`~ppokit.hub.model_card`)."""
