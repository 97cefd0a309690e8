"""``python -m data_gen`` -> :func:`data_gen.cli.main`."""

from data_gen.cli import main

raise SystemExit(main())
