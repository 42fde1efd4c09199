"""The public :class:`~.runtime.Runtime`: where models, devices, the pipeline, the decoder and streams are
wired together. Everything else points down from here; only the CLI and the server import it."""
