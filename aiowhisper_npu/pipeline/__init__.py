"""The generic staged tile pipeline: the buffer pool, the scheduler, kernel lane threads and statistics. It
knows nothing about Whisper; it imports only :mod:`aiowhisper_npu.tiles` (tiles, jobs and the device
protocol) and errors."""
