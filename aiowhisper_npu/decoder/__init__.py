"""The host-side text decoder: tokenizer, decoder forward with its caches, decoding strategies and logit
rules, the seek loop over windows and word timing. No asyncio below the engine; imports models and the
encoder's element-wise kernels."""
