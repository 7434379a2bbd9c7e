"""The released LTX-2 architectures per model generation, and full-size builds with random weights.

diffusers 0.42.1 serves LTX-2.0, 2.3 and 2.5 with the same classes; the generations differ only in
config switches and in the text encoder (from diffusers' conversion script and the model cards):

* 2.0: Gemma-3-12B text encoder, 2-layer connectors with one shared projection, the caption
  projection inside the transformer, HiFi-GAN vocoder at 24 kHz, rational latent upsampler.
* 2.3: gated attention, cross-attention (prompt) modulation and perturbed attention in the
  transformer, 8-layer gated connectors with per-modality projections, a slimmer video VAE, a
  vocoder with bandwidth extension to 48 kHz.
* 2.5: 2.3 plus no video feed-forward bias and a keyframe position embedding; a Gemma-4 text
  encoder; a duration head (unused here: the request gives the duration); image CRF 18.

``build_dummy_components(device, dtype, generation=...)`` builds a generation's full architecture
with random weights directly on ``device`` (``"meta"``: structure and shapes only, no memory). Its
text encoder has the real architecture; only the tokenizer is the small in-code one (the real one
is a download), which changes nothing about cost: prompts are padded to ``max_sequence_length``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reelgen.engines.tiny import _default_dtype, _seeded, build_tokenizer, lib, scheduler

if TYPE_CHECKING:
    import torch

from reelgen.profiles import GENERATIONS

#: Transformer switches per generation (the rest of the config is shared).
TRANSFORMER_SWITCHES: dict[str, dict[str, Any]] = {
    "2.0": {
        "gated_attn": False,
        "cross_attn_mod": False,
        "audio_gated_attn": False,
        "audio_cross_attn_mod": False,
        "use_prompt_embeddings": True,
        "perturbed_attn": False,
    },
    "2.3": {
        "gated_attn": True,
        "cross_attn_mod": True,
        "audio_gated_attn": True,
        "audio_cross_attn_mod": True,
        "use_prompt_embeddings": False,
        "perturbed_attn": True,
    },
}
#: 2.5 = 2.3 without the video feed-forward bias, with a keyframe position embedding
TRANSFORMER_SWITCHES["2.5"] = TRANSFORMER_SWITCHES["2.3"] | {"ff_bias": False, "use_keyframes_abs_pos_embedding": True}

_TRANSFORMER: dict[str, Any] = {
    "in_channels": 128,
    "out_channels": 128,
    "patch_size": 1,
    "patch_size_t": 1,
    "num_attention_heads": 32,
    "attention_head_dim": 128,
    "cross_attention_dim": 4096,
    "vae_scale_factors": (8, 32, 32),
    "audio_in_channels": 128,
    "audio_out_channels": 128,
    "audio_num_attention_heads": 32,
    "audio_attention_head_dim": 64,
    "audio_cross_attention_dim": 2048,
    "num_layers": 48,
    "caption_channels": 3840,
    # the class default is "interleaved"; every release uses "split"
    "rope_type": "split",
    "rope_double_precision": True,
}

_CONNECTORS: dict[str, dict[str, Any]] = {
    "2.0": {
        "caption_channels": 3840,
        "text_proj_in_factor": 49,
        "video_connector_num_attention_heads": 30,
        "video_connector_attention_head_dim": 128,
        "video_connector_num_layers": 2,
        "video_connector_num_learnable_registers": 128,
        "audio_connector_num_attention_heads": 30,
        "audio_connector_attention_head_dim": 128,
        "audio_connector_num_layers": 2,
        "audio_connector_num_learnable_registers": 128,
        "connector_rope_base_seq_len": 4096,
        "rope_type": "split",
        "per_modality_projections": False,
        "proj_bias": False,
    },
    "2.3": {
        "caption_channels": 3840,
        "text_proj_in_factor": 49,
        "video_connector_num_attention_heads": 32,
        "video_connector_attention_head_dim": 128,
        "video_connector_num_layers": 8,
        "video_connector_num_learnable_registers": 128,
        "video_gated_attn": True,
        "audio_connector_num_attention_heads": 32,
        "audio_connector_attention_head_dim": 64,
        "audio_connector_num_layers": 8,
        "audio_connector_num_learnable_registers": 128,
        "audio_gated_attn": True,
        "connector_rope_base_seq_len": 4096,
        "rope_type": "split",
        "per_modality_projections": True,
        "video_hidden_dim": 4096,
        "audio_hidden_dim": 2048,
        "proj_bias": True,
    },
}
_CONNECTORS["2.5"] = dict(_CONNECTORS["2.3"])

_VAE_COMMON: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 128,
    "down_block_types": ("LTX2VideoDownBlock3D",) * 4,
    "spatio_temporal_scaling": (True,) * 4,
    "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    "timestep_conditioning": False,
    "patch_size": 4,
    "patch_size_t": 1,
    "resnet_norm_eps": 1e-6,
    "encoder_causal": True,
    "decoder_causal": False,
    "encoder_spatial_padding_mode": "zeros",
    # must be given: the constructor would derive 64/16 from the block layout while its decoder does 32/8
    "spatial_compression_ratio": 32,
    "temporal_compression_ratio": 8,
}
_VAE: dict[str, dict[str, Any]] = {
    "2.0": {
        **_VAE_COMMON,
        "block_out_channels": (256, 512, 1024, 2048),
        "decoder_block_out_channels": (256, 512, 1024),
        "layers_per_block": (4, 6, 6, 2, 2),
        "decoder_layers_per_block": (5, 5, 5, 5),
        "decoder_spatio_temporal_scaling": (True,) * 3,
        "decoder_inject_noise": (False,) * 4,
        "upsample_residual": (True,) * 3,
        "upsample_factor": (2, 2, 2),
        "decoder_spatial_padding_mode": "reflect",
    },
    "2.3": {
        **_VAE_COMMON,
        "block_out_channels": (256, 512, 1024, 1024),
        "decoder_block_out_channels": (256, 512, 512, 1024),
        "layers_per_block": (4, 6, 4, 2, 2),
        "decoder_layers_per_block": (4, 6, 4, 2, 2),
        "decoder_spatio_temporal_scaling": (True,) * 4,
        "decoder_inject_noise": (False,) * 5,
        "upsample_type": ("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
        "upsample_residual": (False,) * 4,
        "upsample_factor": (2, 2, 1, 2),
        "decoder_spatial_padding_mode": "zeros",
    },
}
_VAE["2.5"] = dict(_VAE["2.3"])

_GEMMA_12B_TEXT: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 3840,
    "intermediate_size": 15_360,
    "num_hidden_layers": 48,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 256,
    "sliding_window": 1024,
    "max_position_embeddings": 131_072,
}
_GEMMA3_12B_VISION: dict[str, Any] = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 896,
    "patch_size": 14,
    "vision_use_head": False,
}


def _known(generation: str) -> None:
    if generation not in GENERATIONS:
        from reelgen.errors import ErrorCode, ReelgenError

        raise ReelgenError(ErrorCode.INVALID_PROFILE, f"unknown LTX-2 generation {generation!r}")


def _text_encoder(generation: str) -> Any:
    transformers = lib("transformers")
    if generation == "2.5":
        # Lightricks' Gemma-4 12B fine-tune; its exact widths are not published in a config we can
        # read offline, so the Gemma-3-12B text widths stand in (the cost is of the same order).
        text = {**_GEMMA_12B_TEXT, "global_head_dim": 256}
        return transformers.Gemma4UnifiedForConditionalGeneration(
            transformers.Gemma4UnifiedConfig(text_config=text)
        ).eval()
    text = {**_GEMMA_12B_TEXT, "query_pre_attn_scalar": 256}
    return transformers.Gemma3ForConditionalGeneration(
        transformers.Gemma3Config(text_config=text, vision_config=dict(_GEMMA3_12B_VISION))
    ).eval()


def build_dummy_components(
    device: str,
    dtype: torch.dtype,
    seed: int = 0,
    *,
    generation: str = "2.0",
    text_encoder_device: str | None = None,
    text_encoder: bool = True,
) -> dict[str, Any]:
    """A released LTX-2 architecture with random weights, built on ``device`` in ``dtype``.

    Parameters are created directly on the device (no host copy), so on a GPU this takes seconds.
    ``device="meta"`` builds the structure without any memory (tests check the shapes this way).
    ``text_encoder_device`` puts the 12B text encoder elsewhere (``"cpu"`` when it is offloaded);
    ``text_encoder=False`` leaves it out (for checks that need only the denoiser's shapes).
    """
    import torch

    _known(generation)
    diffusers, ltx2 = lib("diffusers"), lib("diffusers.pipelines.ltx2")
    comps: dict[str, Any] = {"tokenizer": build_tokenizer(), "scheduler": scheduler()}
    if text_encoder:
        with _seeded(seed), torch.device(text_encoder_device or device), _default_dtype(dtype):
            comps["text_encoder"] = _text_encoder(generation)
    with _seeded(seed + 1), torch.device(device), _default_dtype(dtype):
        comps["transformer"] = diffusers.LTX2VideoTransformer3DModel(
            **_TRANSFORMER, **TRANSFORMER_SWITCHES[generation]
        ).eval()
        comps["connectors"] = ltx2.LTX2TextConnectors(**_CONNECTORS[generation]).eval()
        comps["vae"] = diffusers.AutoencoderKLLTX2Video(**_VAE[generation]).eval()
        comps["audio_vae"] = diffusers.AutoencoderKLLTX2Audio().eval()
        # the vocoders' no-argument defaults are the released configurations
        vocoder = ltx2.LTX2Vocoder if generation == "2.0" else ltx2.LTX2VocoderWithBWE
        comps["vocoder"] = vocoder().eval()
        if generation == "2.5":
            comps["duration_head"] = ltx2.LTX2DurationHead().eval()
    return comps


def build_dummy_latent_upsampler(device: str, dtype: torch.dtype, seed: int = 0, *, generation: str = "2.0") -> Any:
    """The released x2 spatial latent upsampler architecture with random weights."""
    import torch

    with _seeded(seed + 6), torch.device(device), _default_dtype(dtype):
        return (
            lib("diffusers.pipelines.ltx2").LTX2LatentUpsamplerModel(use_rational_resampler=generation == "2.0").eval()
        )
