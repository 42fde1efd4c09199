"""Audio in: validation, file loading and resampling (:mod:`.io`), and Whisper's log-mel front end, offline
(:mod:`.mel`) and incremental (:mod:`.mel_stream`). Imports only numpy and :mod:`aiowhisper_npu.errors`."""
