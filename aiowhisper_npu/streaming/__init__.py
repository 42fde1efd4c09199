"""Streams of audio chunks: the encoder stream (:mod:`.stream`) and its input side, a bounded reader with
validation and streaming resampling (:mod:`.flow`). It reaches the runtime through a small protocol only."""
