"""The Whisper encoder as tile kernels (:mod:`.kernels`) and its tile graph (:mod:`.plan`). No asyncio here:
it imports models, the generic tile types of :mod:`aiowhisper_npu.pipeline.tiles` and the native kernels."""
