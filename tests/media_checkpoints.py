"""Tiny random-weight multimodal checkpoints, each saved with its processor (configured offline)
and a chat template we wrote after its family's published format; the tokenizer is the default
model's, with the family's placeholder tokens added."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoTokenizer, PreTrainedModel

from tests.conftest import TINY_SIZES

# LLaVA 1.5's format ("USER: <image>\n... ASSISTANT:"), the image before the text.
LLAVA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ message['content'] }}{{ '\\n' }}"
    "{% elif message['role'] == 'user' %}USER: {% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>{{ '\\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}{{ '\\n' }}"
    "{% else %}ASSISTANT: {{ message['content'] }}{{ eos_token }}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Gemma 3's turns; an image is its <start_of_image> marker (the processor expands it).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}<start_of_turn>{{ role }}\n{% if message['content'] is string %}"
    "{{ message['content'] | trim }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}"
    "{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# Qwen2-Audio / Audio Flamingo 3: ChatML, each audio clip its <sound> placeholder.
AUDIO_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for item in message['content'] %}{% if item['type'] == 'audio' %}"
    "<sound>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _text(tokenizer: Any, name: str = "LlamaConfig", **extra: Any) -> Any:
    return getattr(transformers, name)(
        **TINY_SIZES,
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=0,
        tie_word_embeddings=False,
        **extra,
    )


def _opinionated(model: PreTrainedModel, std: float = 0.2) -> PreTrainedModel:
    """Random weights whose greedy paths are not ties (and not one token over and over)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1 and "norm" not in name:
                parameter.normal_(0, std)
    return model.eval()


def _tokenizer(checkpoint: Path, tokens: list[str], **special: str) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, extra_special_tokens=special or None)
    tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    return tokenizer


def llava(checkpoint: Path, target: Path) -> Path:
    tokenizer = _tokenizer(checkpoint, ["<image>"])
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
    )
    config = transformers.LlavaConfig(
        vision_config=vision,
        text_config=_text(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = _opinionated(transformers.LlavaForConditionalGeneration(config))
    images = transformers.CLIPImageProcessor(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
    )
    processor = transformers.LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )
    return _save(model, processor, tokenizer, LLAVA_TEMPLATE, target)


def gemma3(checkpoint: Path, target: Path) -> Path:
    specials = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    tokenizer = _tokenizer(checkpoint, list(specials.values()), **specials)
    torch.manual_seed(0)
    text = _text(
        tokenizer,
        "Gemma3TextConfig",
        head_dim=16,
        sliding_window=8,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention"],
    )
    vision = transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=7,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in specials.items()}
    config = transformers.Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=ids["boi_token"],
        eoi_token_index=ids["eoi_token"],
        image_token_index=ids["image_token"],
    )
    model = _opinionated(transformers.Gemma3ForConditionalGeneration(config), std=0.05)
    images = transformers.Gemma3ImageProcessor(size={"height": 28, "width": 28})
    processor = transformers.Gemma3Processor(image_processor=images, tokenizer=tokenizer, image_seq_length=4)
    return _save(model, processor, tokenizer, GEMMA3_TEMPLATE, target)


def audio(checkpoint: Path, target: Path) -> Path:
    tokenizer = _tokenizer(checkpoint, ["<sound>"])
    torch.manual_seed(0)
    encoder = transformers.AudioFlamingo3EncoderConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=128
    )
    config = transformers.AudioFlamingo3Config(
        audio_config=encoder,
        text_config=_text(tokenizer, "Qwen2Config"),
        audio_token_id=tokenizer.convert_tokens_to_ids("<sound>"),
    )
    model = _opinionated(transformers.AudioFlamingo3ForConditionalGeneration(config))
    features = transformers.WhisperFeatureExtractor(feature_size=128)
    processor = transformers.AudioFlamingo3Processor(feature_extractor=features, tokenizer=tokenizer)
    return _save(model, processor, tokenizer, AUDIO_TEMPLATE, target)


def _save(model: PreTrainedModel, processor: Any, tokenizer: Any, template: str, target: Path) -> Path:
    tokenizer.chat_template = template
    processor.chat_template = template
    model.save_pretrained(target)
    processor.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
