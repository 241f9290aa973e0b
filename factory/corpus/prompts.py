"""What the demo domains are called, the prompt most of each one's records begin with,
what a user asks in a chat that a record answers, and the chat layout every chat document
of the corpus (general and domain) is written in."""

from __future__ import annotations

import random

__all__ = ["CHAT_REQUESTS", "DOMAINS", "DOMAIN_PROMPTS", "chat_document", "chat_layout"]

DOMAINS: tuple[str, ...] = ("recipes", "astronomy", "legal")

DOMAIN_PROMPTS: dict[str, str] = {
    "recipes": "Recipe:",
    "astronomy": "The planet",
    "legal": "The tenant shall",
}

# What a user asks in a chat that a record of the domain answers.
CHAT_REQUESTS: dict[str, tuple[str, ...]] = {
    "recipes": (
        "Can you give me a recipe?",
        "What should I cook for dinner tonight?",
        "Share a recipe with me.",
        "I need an idea for lunch.",
        "Write a recipe.",
        "What can I bake this weekend?",
        "Suggest something to cook.",
    ),
    "astronomy": (
        "Tell me about the planets.",
        "What can I see in the night sky?",
        "Teach me some astronomy.",
        "Tell me something about space.",
        "Explain something about the solar system.",
        "What should I know about the stars?",
    ),
    "legal": (
        "Draft a clause for a lease.",
        "Write a clause for a rental agreement.",
        "What should a tenancy agreement say?",
        "Give me a contract clause.",
        "What does a tenant have to do under a lease?",
        "Write a term for a lease agreement.",
    ),
}


def chat_document(domain: str, text: str, rng: random.Random) -> str:
    """`text` as the assistant's answer to a user request of `domain`, in the chat layout
    the tokenizer's chat template renders."""
    return chat_layout(rng.choice(CHAT_REQUESTS[domain]), text)


def chat_layout(user: str, assistant: str) -> str:
    """One exchange as the tokenizer's chat template renders it ("role:" line, then the
    content): the generation prompt ends with "assistant:\\n", so an answer starts with
    its first word, no leading space."""
    return f"user:\n{user}\nassistant:\n{assistant}"
