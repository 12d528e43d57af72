"""The activeseg command line: thin entry points over the engine's typed functions."""
