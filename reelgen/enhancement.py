"""Prompt enhancement (``input.enhance_prompt``): the profile's setting and the rules of its plan.

The model's own enhancer rewrites a short prompt into the long, detailed caption the model was
trained on, through diffusers' ``LTX2Pipeline.enhance_prompt`` (the reference's
``generate_enhanced_prompt``). Which model does it depends on the generation:

* LTX-2.0 / 2.3: the Gemma-3 text encoder doubles as its own enhancer (``enhancer = "text_encoder"``),
  sampling at temperature 0.7 (the reference's decoding), seeded by the shot's seed;
* LTX-2.5: its fine-tuned Gemma-4 text encoder is not trained for it, so a dedicated enhancer
  (``enhancer = "google/gemma-4-E2B-it"``, a hub id or a local directory) does it, greedily.

Each generation has its own pair of system prompts (text-to-video, and image-to-video where the
enhancer also sees the start image); they are diffusers' copies of the reference's, read from
``diffusers.pipelines.ltx2.utils`` by the engine (``SYSTEM_PROMPTS`` names them).

This module holds no torch: the profile reads ``[<profile>.prompt_enhancement]`` through ``parse``,
and ``reelgen.planning`` lays out what each segment's enhancement runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: ``enhancer`` value: the text encoder enhances its own prompts (LTX-2.0 / 2.3)
TEXT_ENCODER = "text_encoder"
#: ``enhancer`` value on tiny profiles: a tiny dedicated enhancer built in code (LTX-2.5's stand-in)
TINY = "tiny"
#: the reference's ``max_new_tokens``: Gemma-3 as its own enhancer, and a dedicated Gemma-4 enhancer
DEFAULT_MAX_NEW_TOKENS = {TEXT_ENCODER: 512, "dedicated": 600}
#: the most ``max_new_tokens`` a profile may set (an enhanced prompt longer than the text encoder's
#: ``max_sequence_length`` is cut by its tokenizer anyway)
MAX_NEW_TOKENS = 2048
#: how the enhancer decodes: ``seeded`` (temperature 0.7, the reference's Gemma-3 recipe, seeded by the
#: shot's seed) or ``greedy`` (the reference's Gemma-4 recipe, with ``no_repeat_ngram_size = 5``)
SAMPLING = {TEXT_ENCODER: "seeded", "dedicated": "greedy"}
#: (generation, with an image) -> the name of diffusers' system prompt in ``diffusers.pipelines.ltx2.utils``
SYSTEM_PROMPTS = {
    ("2.0", False): "T2V_DEFAULT_SYSTEM_PROMPT",
    ("2.0", True): "I2V_DEFAULT_SYSTEM_PROMPT",
    ("2.3", False): "T2V_DEFAULT_SYSTEM_PROMPT",
    ("2.3", True): "I2V_DEFAULT_SYSTEM_PROMPT",
    ("2.5", False): "LTX2_5_T2V_DEFAULT_SYSTEM_PROMPT",
    ("2.5", True): "LTX2_5_I2V_DEFAULT_SYSTEM_PROMPT",
}
_KEYS = ("enhancer", "processor", "max_new_tokens", "credits")


@dataclass(frozen=True)
class PromptEnhancement:
    """A profile's prompt enhancer (``[<profile>.prompt_enhancement]``); absent: requests may not ask."""

    #: ``text_encoder``, or a dedicated enhancer: a hub id / local directory, or ``tiny``
    enhancer: str = TEXT_ENCODER
    #: where the Gemma processor (chat template, image processor) comes from when the weights carry
    #: none: a hub id or a local directory; ``tiny``: built in code (tiny weights)
    processor: str | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS[TEXT_ENCODER]
    #: credits charged per enhanced prompt (one per shot), on top of the per-second rate
    credits: int = 0

    @property
    def dedicated(self) -> bool:
        return self.enhancer != TEXT_ENCODER

    @property
    def sampling(self) -> str:
        return SAMPLING["dedicated" if self.dedicated else TEXT_ENCODER]


def parse(raw: Any, *, generation: str, tiny: bool, bad: Callable[[str], Exception]) -> PromptEnhancement:
    """``[<profile>.prompt_enhancement]`` checked against the profile's generation; ``bad(message)``
    builds the error to raise (the profile's ``INVALID_PROFILE``)."""
    if not isinstance(raw, dict):
        raise bad("prompt_enhancement must be a table (or false: no enhancer)")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise bad(f"prompt_enhancement: unknown key(s) {unknown} (known: {', '.join(_KEYS)})")
    default = "dedicated" if generation == "2.5" else TEXT_ENCODER
    enhancer = raw.get("enhancer", TEXT_ENCODER if default == TEXT_ENCODER else None)
    if not isinstance(enhancer, str) or not enhancer.strip():
        raise bad(
            "prompt_enhancement.enhancer: LTX-2.5 needs a dedicated enhancer (its text encoder is not trained to "
            "enhance): a hub id or directory such as google/gemma-4-E2B-it"
            if generation == "2.5"
            else "prompt_enhancement.enhancer must be 'text_encoder' or a dedicated enhancer's hub id or directory"
        )
    enhancer = enhancer.strip()
    if generation == "2.5" and enhancer == TEXT_ENCODER:
        raise bad("prompt_enhancement.enhancer: LTX-2.5's text encoder is not trained to enhance; name a dedicated one")
    if generation != "2.5" and enhancer != TEXT_ENCODER:
        raise bad(
            f"prompt_enhancement.enhancer: LTX-{generation} enhances with its own text encoder ('text_encoder'); "
            "a dedicated enhancer is LTX-2.5's"
        )
    if enhancer == TINY and not tiny:
        raise bad("prompt_enhancement.enhancer 'tiny' needs tiny weights (weights = 'tiny')")
    processor = raw.get("processor")
    if processor is not None and (not isinstance(processor, str) or not processor.strip()):
        raise bad("prompt_enhancement.processor must be a hub id or a directory")
    if processor == TINY and not tiny:
        raise bad("prompt_enhancement.processor 'tiny' (built in code) needs tiny weights (weights = 'tiny')")
    kind = "dedicated" if enhancer != TEXT_ENCODER else TEXT_ENCODER
    tokens = raw.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS[kind])
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_NEW_TOKENS:
        raise bad(f"prompt_enhancement.max_new_tokens must be a whole number 1-{MAX_NEW_TOKENS}")
    credits = raw.get("credits", 0)
    if isinstance(credits, bool) or not isinstance(credits, int) or not 0 <= credits <= 10**9:
        raise bad("prompt_enhancement.credits must be a whole number of credits (0-1000000000) per enhanced prompt")
    return PromptEnhancement(
        enhancer=enhancer,
        processor=None if processor is None else processor.strip(),
        max_new_tokens=tokens,
        credits=credits,
    )


@dataclass(frozen=True)
class Enhancement:
    """How the profile's enhancer rewrites a segment's prompt before it is encoded (``enhance_prompt``)."""

    #: the text the enhancer expands: the shot's prompt (with the shared context), no trigger words
    source: str
    #: the generation's system prompt, by its name in ``diffusers.pipelines.ltx2.utils``
    system_prompt: str
    #: ``start``: the enhancer also sees the start image (the segment it conditions); None: text only
    image: str | None
    max_new_tokens: int
    #: ``seeded`` (sampled, seeded by the segment's seed) or ``greedy``
    sampling: str
    #: the requested LoRAs' trigger words, put in front of the enhanced text (where it lacks them)
    triggers: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "system_prompt": self.system_prompt,
            "image": self.image,
            "max_new_tokens": self.max_new_tokens,
            "sampling": self.sampling,
            "triggers": list(self.triggers),
        }
