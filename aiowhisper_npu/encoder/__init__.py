"""The Whisper encoder as tile kernels (:mod:`.kernels`) and its tile graph (:mod:`.plan`). No asyncio here:
it imports models, the generic tile types of :mod:`aiowhisper_npu.tiles`, the shared numerics
(:mod:`aiowhisper_npu.numerics`) and the native kernels."""
