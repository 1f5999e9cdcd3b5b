"""Reading and writing saekit artefacts: SAE folders (SAELens-compatible) and suites of them, locally
or on the Hugging Face Hub (``hf://`` references anywhere a folder is read; :func:`push_to_hub`)."""

from saekit.io.artifact import is_sae_folder, load_sae, load_suite, save_sae, save_suite
from saekit.io.publish import push_to_hub

__all__ = ["save_sae", "load_sae", "save_suite", "load_suite", "is_sae_folder", "push_to_hub"]
