"""``python -m replay_lcmat.cli`` = the ``replay-lcmat`` command."""

from replay_lcmat.cli import main

raise SystemExit(main())
