"""One module per stage; each exposes its config dataclass (``GenerateConfig``, …) and ``main(config) -> status``."""
