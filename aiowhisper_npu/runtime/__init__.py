"""The public :class:`~.runtime.Runtime`: where models, devices, the pipeline, the decoder and streams are
wired together; :mod:`.host`, the task that owns what an open runtime holds; :class:`~.sync.SyncRuntime`,
its blocking facade for threads. Everything else points down from here; only the CLI and the server
import it."""
