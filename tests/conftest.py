"""Shared test set-up. Its presence puts tests/ on sys.path, so tests can `import tiny_lm`."""
