"""One module per stage; each exposes ``Config`` and ``main(config) -> exit status``."""
