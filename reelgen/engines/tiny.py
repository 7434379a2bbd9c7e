"""LTX-2 components built in code: tiny random weights (tests, offline demo) and full-size dummies.

Nothing here downloads anything. Both builders keep the *real* compression geometry of LTX-2
(32x spatial / 8x temporal video VAE; 16 kHz mel at hop 160 with 4x audio latent compression;
a 24 kHz vocoder), so frame counts, latent shapes, audio lengths and durations are those of the
released model; only widths, depths and the weights differ.

* ``build_tiny_components(seed)`` — every component a few hundred kB, seeded so that two builds are
  bit-identical (tests compare outputs across builds and processes).
* ``build_dummy_components(device, dtype)`` — the released LTX-2 (19B) architecture with random
  weights, built directly on the target device and dtype (for GPU benchmarks where the real
  checkpoint cannot be downloaded). Its text encoder is the Gemma-3-12B architecture; only the
  tokenizer is the small in-code one (the real one is a download), which changes nothing about
  cost: prompts are padded to ``max_sequence_length`` tokens either way.

Output from either is noise.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Gemma's special tokens, in the order the tiny vocabulary assigns them ids.
SPECIAL_TOKENS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
_CHARS = "\u2581abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()"

#: Width of the tiny latent space (real LTX-2: 128).
TINY_LATENT_CHANNELS = 8

# The released LTX-2.0 video VAE (diffusers' conversion script). The compression ratios must be
# given: the constructor would otherwise derive 64/16 from the block layout while its decoder
# really does 32/8, and the pipeline would silently make a smaller, shorter video.
_FULL_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 128,
    "block_out_channels": (256, 512, 1024, 2048),
    "down_block_types": ("LTX2VideoDownBlock3D",) * 4,
    "decoder_block_out_channels": (256, 512, 1024),
    "layers_per_block": (4, 6, 6, 2, 2),
    "decoder_layers_per_block": (5, 5, 5, 5),
    "spatio_temporal_scaling": (True, True, True, True),
    "decoder_spatio_temporal_scaling": (True, True, True),
    "decoder_inject_noise": (False, False, False, False),
    "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    "upsample_residual": (True, True, True),
    "upsample_factor": (2, 2, 2),
    "timestep_conditioning": False,
    "patch_size": 4,
    "patch_size_t": 1,
    "resnet_norm_eps": 1e-6,
    "encoder_causal": True,
    "decoder_causal": False,
    "encoder_spatial_padding_mode": "zeros",
    "decoder_spatial_padding_mode": "reflect",
    "spatial_compression_ratio": 32,
    "temporal_compression_ratio": 8,
}

# Gemma-3-12B (google/gemma-3-12b-it): the LTX-2 text encoder. The pipeline stacks all 49 hidden
# states, so the connectors see 3840 * 49 features per token.
_GEMMA3_12B_TEXT: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 3840,
    "intermediate_size": 15_360,
    "num_hidden_layers": 48,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
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


def lib(name: str) -> Any:
    """Import ``diffusers`` / ``transformers`` (sub)modules lazily, typed as ``Any`` (they ship no usable stubs)."""
    return importlib.import_module(name)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block with the global torch RNG set to ``seed``, restoring the caller's RNG after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_tokenizer() -> Any:
    """A character-level Gemma tokenizer built in memory: Gemma's special tokens, byte fallback, ASCII.

    Any UTF-8 text round-trips (unknown characters fall back to ``<0xNN>`` byte tokens).
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = lib("transformers").GemmaTokenizerFast(vocab=vocab, merges=[])
    tok.padding_side = "left"  # what the LTX-2 pipelines use
    return tok


def _tiny_text_encoder(vocab_size: int) -> Any:
    transformers = lib("transformers")
    cfg = transformers.Gemma3Config(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 2048,
            "sliding_window": 64,
            "query_pre_attn_scalar": 16,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        mm_tokens_per_image=4,
        boi_token_index=SPECIAL_TOKENS.index("<start_of_image>"),
        eoi_token_index=SPECIAL_TOKENS.index("<end_of_image>"),
        image_token_index=SPECIAL_TOKENS.index("<image_soft_token>"),
    )
    return transformers.Gemma3ForConditionalGeneration(cfg).eval()


def _scheduler() -> Any:
    # The non-distilled LTX-2 scheduler (dynamic shifting by sequence length).
    return lib("diffusers").FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )


def build_tiny_components(seed: int = 0) -> dict[str, Any]:
    """Every LTX-2 pipeline component, tiny and seeded; the keys are ``LTX2Pipeline``'s arguments."""
    diffusers, ltx2 = lib("diffusers"), lib("diffusers.pipelines.ltx2")
    heads, head_dim = 2, 8  # real: 32 x 128
    a_heads, a_head_dim = 2, 4  # real: 32 x 64
    mel_bins, audio_latent_channels = 16, 2  # real: 64 mel bins, 8 latent channels
    audio_token_dim = audio_latent_channels * (mel_bins // 4)  # real: 8 * 16 = 128
    with _seeded(seed):
        tokenizer = build_tokenizer()
        text_encoder = _tiny_text_encoder(vocab_size=len(tokenizer) + 16)
    te_hidden = text_encoder.config.text_config.hidden_size
    te_layers = text_encoder.config.text_config.num_hidden_layers
    with _seeded(seed + 1):
        transformer = diffusers.LTX2VideoTransformer3DModel(
            in_channels=TINY_LATENT_CHANNELS,
            out_channels=TINY_LATENT_CHANNELS,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            cross_attention_dim=heads * head_dim,
            vae_scale_factors=(8, 32, 32),
            audio_in_channels=audio_token_dim,
            audio_out_channels=audio_token_dim,
            audio_num_attention_heads=a_heads,
            audio_attention_head_dim=a_head_dim,
            audio_cross_attention_dim=a_heads * a_head_dim,
            num_layers=2,
            caption_channels=te_hidden,
            rope_type="split",
            rope_double_precision=True,
        )
    with _seeded(seed + 2):
        # LTX-2.0: the connector width equals the text encoder width (30 x 128 = 3840 in the real model)
        connectors = ltx2.LTX2TextConnectors(
            caption_channels=te_hidden,
            text_proj_in_factor=te_layers + 1,
            video_connector_num_attention_heads=2,
            video_connector_attention_head_dim=te_hidden // 2,
            video_connector_num_layers=1,
            video_connector_num_learnable_registers=8,
            audio_connector_num_attention_heads=2,
            audio_connector_attention_head_dim=te_hidden // 2,
            audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=8,
            connector_rope_base_seq_len=32,
            rope_type="split",
        )
    with _seeded(seed + 3):
        vae = diffusers.AutoencoderKLLTX2Video(
            in_channels=3,
            out_channels=3,
            latent_channels=TINY_LATENT_CHANNELS,
            patch_size=4,
            patch_size_t=1,
            block_out_channels=(8, 16, 32, 64),
            decoder_block_out_channels=(8, 16, 32),
            down_block_types=("LTX2VideoDownBlock3D",) * 4,
            downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
            spatio_temporal_scaling=(True, True, True, True),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
            decoder_spatio_temporal_scaling=(True, True, True),
            decoder_inject_noise=(False,) * 4,
            upsample_type=("spatiotemporal",) * 3,
            upsample_residual=(True, True, True),
            upsample_factor=(2, 2, 2),
            timestep_conditioning=False,
            encoder_causal=True,
            decoder_causal=False,
            encoder_spatial_padding_mode="zeros",
            decoder_spatial_padding_mode="reflect",
            spatial_compression_ratio=32,
            temporal_compression_ratio=8,
        )
    with _seeded(seed + 4):
        audio_vae = diffusers.AutoencoderKLLTX2Audio(
            base_channels=audio_token_dim,  # latents_mean/std have C * mel/4 entries
            output_channels=2,
            ch_mult=(1, 2, 4),
            num_res_blocks=1,
            attn_resolutions=None,
            in_channels=2,
            resolution=32,
            latent_channels=audio_latent_channels,
            norm_type="pixel",
            causality_axis="height",
            dropout=0.0,
            mid_block_add_attention=False,
            sample_rate=16000,
            mel_hop_length=160,
            is_causal=True,
            mel_bins=mel_bins,
            double_z=True,
        )
    with _seeded(seed + 5):
        vocoder = ltx2.LTX2Vocoder(
            in_channels=2 * mel_bins,
            hidden_channels=64,
            out_channels=2,
            upsample_kernel_sizes=[16, 15, 8, 4, 4],
            upsample_factors=[6, 5, 2, 2, 2],
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3, 5]],
            output_sampling_rate=24000,
        )
    return {
        "transformer": transformer,
        "vae": vae,
        "audio_vae": audio_vae,
        "scheduler": _scheduler(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "connectors": connectors,
        "vocoder": vocoder,
    }


def build_tiny_latent_upsampler(seed: int = 0) -> Any:
    """A tiny x2 spatial latent upsampler for the tiny latent space."""
    with _seeded(seed + 6):
        return lib("diffusers.pipelines.ltx2").LTX2LatentUpsamplerModel(
            in_channels=TINY_LATENT_CHANNELS,
            mid_channels=32,
            num_blocks_per_stage=1,
            dims=3,
            spatial_upsample=True,
            temporal_upsample=False,
            rational_spatial_scale=2.0,
            use_rational_resampler=False,
        )


def build_dummy_components(
    device: str, dtype: torch.dtype, seed: int = 0, *, text_encoder_device: str | None = None
) -> dict[str, Any]:
    """The released LTX-2 (19B) architecture with random weights, built on ``device`` in ``dtype``.

    Parameters are created directly on the device (no host copy), so on a GPU this takes seconds.
    ``device="meta"`` builds the structure without any memory (used by tests to check the shapes).
    ``text_encoder_device`` puts the 12B text encoder elsewhere (``"cpu"`` when it is offloaded).
    """
    import torch

    diffusers, ltx2, transformers = lib("diffusers"), lib("diffusers.pipelines.ltx2"), lib("transformers")
    tokenizer = build_tokenizer()
    with _seeded(seed), torch.device(text_encoder_device or device), _default_dtype(dtype):
        text_encoder = transformers.Gemma3ForConditionalGeneration(
            transformers.Gemma3Config(text_config=dict(_GEMMA3_12B_TEXT), vision_config=dict(_GEMMA3_12B_VISION))
        ).eval()
    with _seeded(seed + 1), torch.device(device), _default_dtype(dtype):
        # No-argument defaults of these classes are the released LTX-2.0 configuration.
        transformer = diffusers.LTX2VideoTransformer3DModel()
        connectors = ltx2.LTX2TextConnectors()
        vae = diffusers.AutoencoderKLLTX2Video(**_FULL_VAE_CONFIG)
        audio_vae = diffusers.AutoencoderKLLTX2Audio()
        vocoder = ltx2.LTX2Vocoder()
    return {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "audio_vae": audio_vae.eval(),
        "scheduler": _scheduler(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "connectors": connectors.eval(),
        "vocoder": vocoder.eval(),
    }


def build_dummy_latent_upsampler(device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """The released LTX-2 x2 spatial latent upsampler architecture with random weights."""
    import torch

    with _seeded(seed + 6), torch.device(device), _default_dtype(dtype):
        return lib("diffusers.pipelines.ltx2").LTX2LatentUpsamplerModel().eval()
