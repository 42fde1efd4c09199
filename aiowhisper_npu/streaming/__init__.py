"""Streams of audio chunks: the encode stream (:mod:`.stream`), live captions (:mod:`.captions`, with the
buffer's hypotheses :mod:`.hypothesis`, LocalAgreement :mod:`.agreement` and the busy rule :mod:`.busy`),
and their shared input side (:mod:`.input`: the reader's lifecycle, the backlog, the lag) over a bounded
reader with validation and streaming resampling (:mod:`.flow`). They reach the runtime through small
protocols only: an encoder for hidden states, the recognizer for text."""
