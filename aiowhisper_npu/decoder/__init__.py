"""One window's encoder output in, tokens out: the tokenizer, the decoder forward with its caches, the
batching engine, generation (search strategies and logit rules, CTranslate2's semantics), language
detection and the word-alignment pass. No asyncio; imports models, the native kernels and the
shared numerics (:mod:`aiowhisper_npu.numerics`)."""
