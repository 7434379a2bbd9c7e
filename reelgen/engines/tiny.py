"""LTX-2 components built in code with tiny random weights: tests and the offline demo.

Nothing here downloads anything. The builders keep the *real* compression geometry of LTX-2
(32x spatial / 8x temporal video VAE; 16 kHz mel at hop 160 with 4x audio latent compression;
the generation's vocoder: 24 kHz for 2.0, 48 kHz for 2.3/2.5) and each generation's classes and
config switches, so frame counts, latent shapes, audio lengths and durations are those of the
released model; only widths, depths and the weights differ. Every component is a few hundred kB,
seeded so that two builds are bit-identical (tests compare outputs across builds and processes).
The full-size architectures (``--load-format dummy``) are in ``reelgen.engines.architectures``.

Output is noise.

Why one module over 400 lines: every tiny component (and the tokenizer and processor the text model
needs) is built here under one seeding discipline, so two builds stay bit-identical.
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
#: Transformer blocks of the tiny model (real LTX-2: 48); its STG block is the last one.
TINY_LAYERS = 2


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


#: Gemma-4's extra multimodal tokens (LTX-2.5's text encoder), after Gemma's own.
GEMMA4_TOKENS = ("<video>", "<boa>", "<eoa>", "<audio>")


def build_tokenizer(extra: tuple[str, ...] = ()) -> Any:
    """A character-level Gemma tokenizer built in memory: Gemma's special tokens, byte fallback, ASCII.

    Any UTF-8 text round-trips (unknown characters fall back to ``<0xNN>`` byte tokens).
    """
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *extra))}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = lib("transformers").GemmaTokenizerFast(vocab=vocab, merges=[])
    tok.padding_side = "left"  # what the LTX-2 pipelines use
    return tok


def _tiny_text_encoder(vocab_size: int, generation: str) -> Any:
    transformers = lib("transformers")
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 2048,
        "sliding_window": 64,
    }
    if generation == "2.5":  # Gemma-4 "unified" (Lightricks' fine-tune in the real model)
        ids = {t: i for i, t in enumerate((*SPECIAL_TOKENS, *GEMMA4_TOKENS))}
        cfg4 = transformers.Gemma4UnifiedConfig(
            text_config=text | {"global_head_dim": 16, "layer_types": ["sliding_attention", "full_attention"]},
            vision_config={
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "mm_embed_dim": 32,
                "output_proj_dims": 32,
                "mm_posemb_size": 16,
            },
            audio_config={"audio_embed_dim": 16},
            boi_token_id=ids["<start_of_image>"],
            eoi_token_id=ids["<end_of_image>"],
            image_token_id=ids["<image_soft_token>"],
            video_token_id=ids["<video>"],
            boa_token_id=ids["<boa>"],
            eoa_token_index=ids["<eoa>"],
            audio_token_id=ids["<audio>"],
        )
        return transformers.Gemma4UnifiedForConditionalGeneration(cfg4).eval()
    cfg = transformers.Gemma3Config(
        text_config=text | {"query_pre_attn_scalar": 16},
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


#: Gemma's turn format for the enhancer's chat messages: the system prompt opens the first user turn
#: (Gemma has no system role); an image item becomes ``<start_of_image>``, which the processor expands.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<start_of_image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_processor(text_encoder: Any) -> Any:
    """A Gemma-3 processor for prompt enhancement with a Gemma-3 model built in code (tiny, or the
    full-size dummy): the in-code tokenizer with Gemma's image tokens and turn format, and an image
    processor at the vision tower's size, each image taking the model's ``mm_tokens_per_image``."""
    transformers = lib("transformers")
    vocab = build_tokenizer().get_vocab()
    image_tokens = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = transformers.GemmaTokenizerFast(vocab=vocab, merges=[], extra_special_tokens=image_tokens)
    tok.padding_side = "left"
    tok.chat_template = CHAT_TEMPLATE
    side = int(text_encoder.config.vision_config.image_size)
    images = transformers.Gemma3ImageProcessorPil(size={"height": side, "width": side}, do_pan_and_scan=False)
    return transformers.Gemma3Processor(
        image_processor=images,
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=int(text_encoder.config.mm_tokens_per_image),
    )


def build_tiny_enhancer(seed: int = 0) -> Any:
    """A tiny dedicated prompt enhancer (a Gemma-3-architecture causal LM standing in for LTX-2.5's
    Gemma-4 enhancer, whose processor needs audio and video feature extractors), seeded."""
    with _seeded(seed + 8):
        return _tiny_text_encoder(len(build_tokenizer()) + 16, "2.0")


def scheduler() -> Any:
    # The non-distilled LTX-2 scheduler (dynamic shifting by sequence length).
    return lib("diffusers").FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )


def build_tiny_components(seed: int = 0, *, generation: str = "2.0") -> dict[str, Any]:
    """Every LTX-2 pipeline component of ``generation``, tiny and seeded (keys: ``LTX2Pipeline``'s arguments).

    The classes and config switches are the generation's (``architectures.TRANSFORMER_SWITCHES``,
    per-modality connectors, the 2.3 VAE layout and 48 kHz vocoder, 2.5's Gemma-4 text encoder and
    duration head); only widths and depths are tiny.
    """
    from reelgen.engines.architectures import TRANSFORMER_SWITCHES, _known

    _known(generation)
    modern = generation != "2.0"
    diffusers, ltx2 = lib("diffusers"), lib("diffusers.pipelines.ltx2")
    heads, head_dim = 2, 8  # real: 32 x 128
    a_heads, a_head_dim = 2, 4  # real: 32 x 64
    mel_bins, audio_latent_channels = 16, 2  # real: 64 mel bins, 8 latent channels
    audio_token_dim = audio_latent_channels * (mel_bins // 4)  # real: 8 * 16 = 128
    with _seeded(seed):
        tokenizer = build_tokenizer(GEMMA4_TOKENS if generation == "2.5" else ())
        text_encoder = _tiny_text_encoder(len(tokenizer) + 16, generation)
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
            num_layers=TINY_LAYERS,
            caption_channels=te_hidden,
            rope_type="split",
            rope_double_precision=True,
            **(TRANSFORMER_SWITCHES[generation] if modern else {}),
        )
    with _seeded(seed + 2):
        connector: dict[str, Any] = {
            "caption_channels": te_hidden,
            "text_proj_in_factor": te_layers + 1,
            "video_connector_num_layers": 1,
            "video_connector_num_learnable_registers": 8,
            "audio_connector_num_layers": 1,
            "audio_connector_num_learnable_registers": 8,
            "connector_rope_base_seq_len": 32,
            "rope_type": "split",
        }
        if modern:  # per-modality projections straight to the transformer widths, gated attention
            connector |= {
                "video_connector_num_attention_heads": heads,
                "video_connector_attention_head_dim": head_dim,
                "audio_connector_num_attention_heads": a_heads,
                "audio_connector_attention_head_dim": a_head_dim,
                "video_gated_attn": True,
                "audio_gated_attn": True,
                "per_modality_projections": True,
                "video_hidden_dim": heads * head_dim,
                "audio_hidden_dim": a_heads * a_head_dim,
                "proj_bias": True,
            }
        else:  # LTX-2.0: the connector width equals the text encoder width (30 x 128 = 3840 in the real model)
            connector |= {
                "video_connector_num_attention_heads": 2,
                "video_connector_attention_head_dim": te_hidden // 2,
                "audio_connector_num_attention_heads": 2,
                "audio_connector_attention_head_dim": te_hidden // 2,
            }
        connectors = ltx2.LTX2TextConnectors(**connector)
    vae_layout: dict[str, Any] = (
        {
            "block_out_channels": (8, 16, 32, 32),
            "decoder_block_out_channels": (8, 16, 16, 32),
            "layers_per_block": (1,) * 5,
            "decoder_layers_per_block": (1,) * 5,
            "decoder_spatio_temporal_scaling": (True,) * 4,
            "decoder_inject_noise": (False,) * 5,
            "upsample_type": ("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
            "upsample_residual": (False,) * 4,
            "upsample_factor": (2, 2, 1, 2),
            "decoder_spatial_padding_mode": "zeros",
        }
        if modern
        else {
            "block_out_channels": (8, 16, 32, 64),
            "decoder_block_out_channels": (8, 16, 32),
            "layers_per_block": (1, 1, 1, 1, 1),
            "decoder_layers_per_block": (1, 1, 1, 1),
            "decoder_spatio_temporal_scaling": (True, True, True),
            "decoder_inject_noise": (False,) * 4,
            "upsample_type": ("spatiotemporal",) * 3,
            "upsample_residual": (True, True, True),
            "upsample_factor": (2, 2, 2),
            "decoder_spatial_padding_mode": "reflect",
        }
    )
    with _seeded(seed + 3):
        vae = diffusers.AutoencoderKLLTX2Video(
            in_channels=3,
            out_channels=3,
            latent_channels=TINY_LATENT_CHANNELS,
            patch_size=4,
            patch_size_t=1,
            down_block_types=("LTX2VideoDownBlock3D",) * 4,
            downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
            spatio_temporal_scaling=(True, True, True, True),
            timestep_conditioning=False,
            encoder_causal=True,
            decoder_causal=False,
            encoder_spatial_padding_mode="zeros",
            spatial_compression_ratio=32,
            temporal_compression_ratio=8,
            **vae_layout,
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
        if modern:  # snake activations and bandwidth extension: 16 kHz mel -> 48 kHz
            vocoder = ltx2.LTX2VocoderWithBWE(
                in_channels=2 * mel_bins,
                hidden_channels=64,  # below 64 the anti-aliased convolutions get zero width
                out_channels=2,
                upsample_kernel_sizes=[11, 4, 4, 4, 4, 4],
                upsample_factors=[5, 2, 2, 2, 2, 2],
                resnet_kernel_sizes=[3],
                resnet_dilations=[[1, 3, 5]],
                bwe_in_channels=128,
                bwe_hidden_channels=32,
                bwe_out_channels=2,
                bwe_upsample_kernel_sizes=[12, 11, 4, 4, 4],
                bwe_upsample_factors=[6, 5, 2, 2, 2],
                bwe_resnet_kernel_sizes=[3],
                bwe_resnet_dilations=[[1, 3, 5]],
                input_sampling_rate=16000,
                output_sampling_rate=48000,
            )
        else:
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
    comps = {
        "transformer": transformer,
        "vae": vae,
        "audio_vae": audio_vae,
        "scheduler": scheduler(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "connectors": connectors,
        "vocoder": vocoder,
    }
    if generation == "2.5":
        with _seeded(seed + 7):
            comps["duration_head"] = ltx2.LTX2DurationHead(
                video_cross_attention_dim=heads * head_dim,
                audio_cross_attention_dim=a_heads * a_head_dim,
                pooler_hidden_dim=8,
                num_queries=1,
                num_pooler_heads=2,
                mlp_hidden_dim=8,
            )
    return comps


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
