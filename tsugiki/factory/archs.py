"""The tiny causal-LM architectures the factory builds: the one list of their names (and of the
sibling and VLM kinds).

:mod:`tsugiki.factory.lm` builds them; ``tsugiki tiny lm|vlm --arch`` and an evolve config's
``tiny_models.arch`` offer them. The list lives apart from ``factory.lm``, which imports torch and
transformers (seconds), so that the CLI's parser and the config schema read the names for free: an
entry names its transformers classes, looked up only when a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from tsugiki.errors import UnknownNameError
from tsugiki.registry import Registry


@dataclass(frozen=True)
class TinyArch:
    config_class: str  # transformers class names
    model_class: str
    llava_text: bool  # a tiny LLaVA may have it as its language model (llava-hf's ship Llama and Mistral ones)


#: how the tiny LM siblings differ from their base (:func:`tsugiki.factory.lm.build_siblings`)
SIBLING_KINDS = ("finetuned", "perturbed")
#: the tiny VLM families (:class:`tsugiki.factory.vlm.TinyVLMSpec`)
VLM_KINDS = ("llava", "llava_next")

TINY_ARCHS: Registry[TinyArch] = Registry("tiny architecture")
TINY_ARCHS.register("llama", TinyArch("LlamaConfig", "LlamaForCausalLM", llava_text=True))
TINY_ARCHS.register("mistral", TinyArch("MistralConfig", "MistralForCausalLM", llava_text=True))
TINY_ARCHS.register("qwen2", TinyArch("Qwen2Config", "Qwen2ForCausalLM", llava_text=False))


def tiny_arch_names() -> list[str]:
    return TINY_ARCHS.names()


def llava_text_arch_names() -> list[str]:
    """The architectures ``tsugiki tiny vlm --arch`` offers for the tiny LLaVAs' language model."""
    return [name for name in TINY_ARCHS if TINY_ARCHS.get(name).llava_text]


def tiny_arch(name: str) -> TinyArch:
    """The entry for ``name``; a ValueError (a programming error: the CLI and configs check names
    first) with a did-you-mean for an unknown one."""
    try:
        return TINY_ARCHS.get(name)
    except UnknownNameError as e:
        raise ValueError(str(e)) from None
