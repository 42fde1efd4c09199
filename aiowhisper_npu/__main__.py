"""``python -m aiowhisper_npu``: the ``aiowhisper-npu`` command."""

from .cli.main import main

raise SystemExit(main())
