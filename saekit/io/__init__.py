"""Reading and writing saekit artefacts: SAE folders (SAELens-compatible) and suites of them."""

from saekit.io.artifact import is_sae_folder, load_sae, load_suite, save_sae, save_suite

__all__ = ["save_sae", "load_sae", "save_suite", "load_suite", "is_sae_folder"]
