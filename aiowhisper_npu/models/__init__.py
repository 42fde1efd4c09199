"""Weights: the model dataclasses (:mod:`.model`), the CTranslate2 and Hugging Face readers, the named
packaged models with their checksums (:mod:`.registry`) and :func:`~.loading.load_model`. Imports audio-free,
runtime-free code only."""
