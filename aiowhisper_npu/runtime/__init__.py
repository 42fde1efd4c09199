"""The public :class:`~.runtime.Runtime`: where models, devices, the pipeline, the decoder and streams are
wired together; :mod:`.host`, the task that owns what an open runtime holds; :mod:`.encoder`, the encoder on
the pipeline; :mod:`.recognizer`, encoder plus decoder engine behind the recognizer protocol;
:class:`~.sync.SyncRuntime`, the blocking facade for threads. Everything else points down from here; only the
CLI and the server import it."""
