"""Event sources. Each module is one source; the engine finds them through ``base``."""
