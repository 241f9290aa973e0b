"""The demo model factory: a tiny Llama base model ("royalty-tiny") and three LoRA adapters
(recipes, astronomy, legal), trained here from generated text, deterministically, and cached
by content hash. See docs/models.md.

Other packages use public names only: `royalty` builds with `build_demo_models` and
`factory.adapters`; `attribution.influence` (loaded by the influence worker alone) opens an
adapter's files with `factory.layout` and runs its torch stage under `factory.progress` and
`factory.training.deterministic_torch`. Importing `factory` imports no torch."""

from factory.build import (
    FACTORY_VERSION,
    DemoModels,
    FactoryConfig,
    ManifestError,
    build_demo_models,
    load_manifest,
)
from factory.corpus import DOMAIN_PROMPTS, DOMAINS, domain_records, general_corpus

__all__ = [
    "DOMAINS",
    "DOMAIN_PROMPTS",
    "FACTORY_VERSION",
    "DemoModels",
    "FactoryConfig",
    "ManifestError",
    "build_demo_models",
    "domain_records",
    "general_corpus",
    "load_manifest",
]
