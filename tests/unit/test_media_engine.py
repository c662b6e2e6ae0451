"""A Qwen2-VL-style model on the engine: its multi-axis rotary positions (M-RoPE) for image rows and
the text after them, with the prompt read whole and in chunks cutting through the image, batched
with a text sequence, equal to transformers' `generate()`. (Its processor needs torchvision, which
has no CPU build on the package index here: the image processor's Pillow variant stands in.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from server.engine import media
from server.engine.model_runner import ModelRunner
from server.engine.scheduler import Scheduler
from server.engine.sequence import Sequence
from server.engine.types import EngineConfig, SamplingParams
from tests.conftest import TINY_SIZES

VOCAB = 600
IMAGE, START, END = VOCAB - 3, VOCAB - 2, VOCAB - 1
NEW = 12


def qwen2_vl() -> transformers.Qwen2VLForConditionalGeneration:
    torch.manual_seed(0)
    text = dict(
        **TINY_SIZES,
        vocab_size=VOCAB,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
    )
    vision = dict(
        depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2
    )
    config = transformers.Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=IMAGE,
        video_token_id=VOCAB - 4,
        vision_start_token_id=START,
        vision_end_token_id=END,
    )
    model = transformers.Qwen2VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1 and "norm" not in name:
                parameter.normal_(0, 0.2)
    model.generation_config.eos_token_id = None
    return model


def image_prompt(
    model: transformers.Qwen2VLForConditionalGeneration,
) -> tuple[list[int], list[int], media.PromptMedia]:
    """(the engine's prompt, transformers' greedy tokens after it, the prompt's media)."""
    pixels = np.random.RandomState(0).randint(0, 255, (56, 84, 3), dtype=np.uint8)
    images = transformers.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    processed = images(images=[Image.fromarray(pixels)], return_tensors="pt")
    rows = int(processed["image_grid_thw"].prod()) // 4  # 2x2 patches merge into one row
    ids = [5, 6, 7, START] + [IMAGE] * rows + [END] + list(range(10, 30))
    inputs = {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "mm_token_type_ids": torch.tensor([[int(t == IMAGE) for t in ids]]),
        **processed,
    }
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)[0, len(ids) :].tolist()
    held = media.PromptMedia(
        inputs=inputs, positions=torch.tensor([i for i, t in enumerate(ids) if t == IMAGE])
    )
    return [media.media_token_id(b"image-1") if t == IMAGE else t for t in ids], expected, held


def step(runner: ModelRunner, scheduler: Scheduler) -> None:
    plan = scheduler.schedule()
    logits = runner.run(plan)
    scheduler.update(plan)
    for seq, row in zip([c.seq for c in plan.chunks if c.samples], logits, strict=True):
        seq.token_ids.append(int(row.argmax()))
        if seq.generated >= seq.params.max_tokens:
            scheduler.finish(seq)


def run_all(runner: ModelRunner, scheduler: Scheduler, seqs: list[Sequence]) -> None:
    while any(s.generated < s.params.max_tokens for s in seqs):
        step(runner, scheduler)


@pytest.mark.parametrize("max_batch_tokens", [512, 8])
def test_qwen2_vl_image_rows_and_positions_match_transformers(max_batch_tokens: int) -> None:
    model = qwen2_vl()
    prompt, expected, held = image_prompt(model)
    runner = ModelRunner(model)
    assert runner.multi_axis
    config = EngineConfig(
        max_running=4,
        max_kv_tokens=1024,
        max_batch_tokens=max_batch_tokens,
        min_capacity=64,
        context_length=256,
        prefill_block=8 if max_batch_tokens == 8 else 32,
    )
    greedy = SamplingParams(max_tokens=NEW, temperature=0.0)
    seqs = [
        Sequence("image", list(prompt), len(prompt), greedy, media=held),
        Sequence("text", [5, 6, 7] * 5, 15, greedy),
    ]
    scheduler = Scheduler(config)
    scheduler.add(seqs)
    run_all(runner, scheduler, seqs)
    assert seqs[0].token_ids[len(prompt) :] == expected
    assert held.axes is not None and held.axes_offset < 0  # later text continues from the image's last axis


def test_a_preempted_sequence_recomputes_its_image_rows() -> None:
    model = qwen2_vl()
    prompt, expected, held = image_prompt(model)
    runner = ModelRunner(model)
    scheduler = Scheduler(
        EngineConfig(max_running=4, max_kv_tokens=256, min_capacity=64, max_batch_tokens=256)
    )
    long_text = Sequence("text", [9] * 60, 60, SamplingParams(max_tokens=150, temperature=0.0))
    scheduler.add([long_text])
    while long_text.generated < 60:  # 120 tokens: a second slot of 128 still fits beside it
        step(runner, scheduler)
    image = Sequence(
        "image", list(prompt), len(prompt), SamplingParams(max_tokens=NEW, temperature=0.0), media=held
    )
    scheduler.add([image])
    run_all(runner, scheduler, [long_text, image])
    # The text outgrew the budget beside it (256 tokens: one slot): the image sequence left, came back.
    assert image.preemptions >= 1
    assert image.token_ids[len(prompt) :] == expected
