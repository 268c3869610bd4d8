"""`python -m mlops.cli`: the `mlops` command without its console script."""

from mlops.cli.entry import main

raise SystemExit(main())
