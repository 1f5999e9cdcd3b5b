"""saekit: sparse autoencoders on language-model activations, many at once."""

__version__ = "0.1.0"
