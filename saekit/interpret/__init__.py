"""Automated interpretability with any OpenAI-compatible chat-completions endpoint: each latent is
explained from its top-activating and sampled contexts (the feature browser's data), and the
explanation is scored by detection and fuzzing as EleutherAI's delphi does. Results go into
``<sae>/explanations.json`` and show on the browser's latent pages.

    from saekit.interpret import EndpointConfig, interpret
    interpret("demo-output/saes", EndpointConfig("http://127.0.0.1:8080/v1", "qwen2.5-7b"), latents=range(100))
"""

from saekit.interpret.client import AnswerError, ChatClient, EndpointConfig
from saekit.interpret.contexts import ContextSettings, latent_contexts
from saekit.interpret.prompts import PROMPTS_VERSION
from saekit.interpret.run import InterpretSettings, interpret

__all__ = [
    "PROMPTS_VERSION",
    "AnswerError",
    "ChatClient",
    "ContextSettings",
    "EndpointConfig",
    "InterpretSettings",
    "interpret",
    "latent_contexts",
]
