"""The generic staged tile pipeline: tiles and jobs, the buffer pool, the scheduler, kernel lane threads and
statistics. It knows nothing about Whisper; it imports only the device protocol and errors."""
