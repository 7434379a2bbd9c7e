"""An LTX-2 engine's prompt enhancer: diffusers' ``LTX2Pipeline.enhance_prompt`` on the engine's own
components, as the profile's ``prompt_enhancement`` and the segment's ``Enhancement`` say.

* The enhancing pipeline is an ``LTX2Pipeline`` of its own over the engine's components plus the
  processor (and, for LTX-2.5, the dedicated enhancer): the generation pipelines are never touched,
  so a request without ``enhance_prompt`` runs exactly as before.
* The processor and a dedicated enhancer are loaded on first use (a worker whose requests never ask
  pays nothing): built in code for tiny weights (``build_processor``, ``build_tiny_enhancer``) and
  for the full-size dummy text encoder; otherwise from the profile's ``processor`` / ``enhancer``
  (a hub id or a directory), or the weights' own ``processor`` component.
* Deterministic for a fixed seed: the segment's seed seeds the enhancer's sampling (diffusers
  applies it with ``torch.manual_seed``; the caller's RNG state is restored afterwards), greedy
  decoding needs none. Decoding is the reference's (``GEMMA3_PROMPT_ENHANCEMENT_CONFIG`` when
  sampling, ``GEMMA4_PROMPT_ENHANCEMENT_CONFIG`` when greedy), ``max_new_tokens`` the profile's.
* Any failure (loading, generating, an empty answer) is ``PROMPT_ENHANCEMENT_FAILED`` with a message
  that names no file; the details go to the log. A stop asked for while it generates (a cancel,
  a lost claim, a shutdown) ends generation at the next token and raises ``Cancelled``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reelgen.engines.base import Cancelled
from reelgen.engines.tiny import lib
from reelgen.enhancement import TINY
from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    import torch

    from reelgen.enhancement import PromptEnhancement
    from reelgen.planning import Job, Segment

log = logging.getLogger("reelgen.engine")

#: control characters an enhancer's text may not keep (random weights emit any byte): all but \t and \n
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: str) -> str:
    """The enhancer's answer as storable text: no control characters (PostgreSQL refuses NUL), trimmed."""
    return _CONTROL.sub("", text).strip()


def _failed(message: str) -> ReelgenError:
    return ReelgenError(ErrorCode.PROMPT_ENHANCEMENT_FAILED, message)


class PromptEnhancer:
    """Enhances planned segments' prompts with the components of one engine."""

    def __init__(
        self,
        spec: PromptEnhancement,
        components: dict[str, Any],
        *,
        device: torch.device,
        dtype: torch.dtype,
        source: str,
        offload: bool,
    ) -> None:
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.source = source  # tiny, dummy, or the weights
        self.offload = offload
        self._components = components
        self._pipe: Any = None

    # -- loading ----------------------------------------------------------------------------
    def _load(self) -> Any:
        """The enhancing pipeline, built on first use."""
        if self._pipe is None:
            try:
                enhancer = self._dedicated() if self.spec.dedicated else None
                processor = self._processor(enhancer)
            except ReelgenError:
                raise
            except Exception as exc:  # any loader's error (missing files, bad configs, no hub access)
                log.warning("cannot load the prompt enhancer: %s: %s", type(exc).__name__, exc)
                raise _failed("The prompt enhancer could not be loaded.") from None
            comps = {k: v for k, v in self._components.items() if k != "processor"}
            self._pipe = lib("diffusers").LTX2Pipeline(**comps, processor=processor, prompt_enhancer=enhancer)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def _dedicated(self) -> Any:
        """LTX-2.5's dedicated enhancer: tiny (built in code) or loaded from a hub id or directory."""
        if self.spec.enhancer == TINY:
            from reelgen.engines.tiny import build_tiny_enhancer

            model = build_tiny_enhancer()
        elif self.source == "dummy":
            raise _failed("The dedicated prompt enhancer is not built for random (dummy) weights.")
        else:
            model = lib("transformers").Gemma4ForConditionalGeneration.from_pretrained(
                self.spec.enhancer, dtype=self.dtype
            )
        model.eval()
        return model.to("cpu" if self.offload else self.device, dtype=self.dtype)

    def _processor(self, enhancer: Any | None) -> Any:
        """The Gemma processor: built in code for tiny and dummy models, else the profile's
        ``processor``, the weights' own, or the dedicated enhancer's."""
        from reelgen.engines.tiny import build_processor

        if self.spec.processor == TINY or self.source in ("tiny", "dummy"):
            return build_processor(enhancer if enhancer is not None else self._components["text_encoder"])
        name = self.spec.processor
        if name is None and self._components.get("processor") is not None:
            return self._components["processor"]
        if name is None and self.spec.dedicated:
            name = self.spec.enhancer
        if name is None:
            raise _failed("The prompt enhancer has no processor (set prompt_enhancement.processor in the profile).")
        return lib("transformers").AutoProcessor.from_pretrained(name)

    # -- enhancing --------------------------------------------------------------------------
    def enhance(self, job: Job, segment: Segment, should_stop: Callable[[], bool] | None = None) -> str:
        """The enhanced text of ``segment`` (its ``enhancement`` planned); see the module docstring."""
        import torch

        plan = segment.enhancement
        if plan is None:
            raise _failed("The segment has no prompt enhancement planned.")
        pipe = self._load()
        utils = lib("diffusers.pipelines.ltx2.utils")
        system_prompt = getattr(utils, plan.system_prompt)
        config = (
            utils.GEMMA3_PROMPT_ENHANCEMENT_CONFIG
            if plan.sampling == "seeded"
            else utils.GEMMA4_PROMPT_ENHANCEMENT_CONFIG
        )
        stop = _StopWhen(should_stop)
        kwargs = dict(config.generation_kwargs) | {
            "stopping_criteria": lib("transformers").StoppingCriteriaList([stop])
        }
        image = job.image(plan.image) if plan.image else None
        model = pipe.prompt_enhancer if pipe.prompt_enhancer is not None else pipe.text_encoder
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                texts = pipe.enhance_prompt(
                    prompt=plan.source,
                    system_prompt=system_prompt,
                    max_new_tokens=plan.max_new_tokens,
                    seed=segment.seed,
                    generation_kwargs=kwargs,
                    device=self.device,
                    image=image,
                )
        except Exception as exc:
            log.warning("the prompt enhancer failed: %s: %s", type(exc).__name__, exc, exc_info=True)
            raise _failed("The prompt enhancer failed.") from None
        finally:
            if self.offload:
                model.to("cpu")
        if stop.stopped:
            raise Cancelled()
        text = clean_text(texts[0]) if texts else ""
        if not text:
            raise _failed("The prompt enhancer returned no text.")
        return text


class _StopWhen:
    """A ``transformers`` stopping criterion: stop generating once ``should_stop()`` says so."""

    def __init__(self, should_stop: Callable[[], bool] | None) -> None:
        self.should_stop = should_stop
        self.stopped = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        import torch

        if self.should_stop is not None and self.should_stop():
            self.stopped = True
        return torch.full((input_ids.shape[0],), self.stopped, dtype=torch.bool, device=input_ids.device)
