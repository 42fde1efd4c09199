"""A recording in, segments out: the seek loop over 30 s windows (:mod:`.seek`) with faster-whisper's
semantics, its options and results, temperature fallback, timestamp splitting, word timing and language
detection. It reaches the encoder and decoder only through the :class:`~.protocol.WindowRecognizer` protocol."""
