"""How much each weight quantization changes the model: over a fixed text, the next-token
distributions of the quantized model against the unquantized one (teacher forcing).

    .venv/bin/python scripts/quant_quality.py                      # the default model
    .venv/bin/python scripts/quant_quality.py --model path/to/checkpoint

Reported per quantization: greedy agreement (positions whose most likely next token is the same)
and the mean KL divergence KL(unquantized || quantized) in nats per token.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from server.config import load_config  # noqa: E402
from server.engine.quantized import quantize_model  # noqa: E402
from server.models.loader import converted_gguf, resolve_source  # noqa: E402

TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden press adapted from those used for "
    "wine. Within fifty years presses were at work in more than two hundred European cities, and "
    "books that had taken a scribe months to copy could be produced by the hundred in weeks. "
    "Prices fell, literacy spread, and scholars could for the first time compare identical copies "
    "of the same text. def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\n\nQuestion: What is the capital of France? Answer: The capital of France is Paris. "
    "Water boils at 100 degrees Celsius at sea level, and the boiling point drops as altitude rises."
)


def default_checkpoint() -> str:
    config = load_config(REPO / "models.yaml")
    spec = config.models[0]
    source = resolve_source(spec, config.base_dir)
    if source.gguf_file:
        return str(converted_gguf(spec, source, config.server))
    return source.location


def log_probs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(model(ids).logits[0].float(), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a checkpoint directory (default: the default model, converted)")
    parser.add_argument("--kinds", default="int8,int4")
    args = parser.parse_args()
    torch.manual_seed(0)
    location = args.model or default_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    reference = log_probs(model, ids)
    results = {"model": location, "tokens": int(ids.shape[1])}
    for kind in args.kinds.split(","):
        quantized = copy.deepcopy(model)
        quantize_model(quantized, kind)  # type: ignore[arg-type]
        got = log_probs(quantized, ids)
        agreement = (got.argmax(-1) == reference.argmax(-1)).float().mean().item()
        kl = (reference.exp() * (reference - got)).sum(-1).mean().item()
        results[kind] = {"greedy_agreement": round(agreement, 4), "mean_kl_nats": round(kl, 5)}
        print(f"{kind}: greedy agreement {agreement:.1%}, mean KL {kl:.4f} nats/token")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
