"""The yardstick only (not part of the product): the naive server every weak implementation is.

One `model.generate()` with a `TextIteratorStreamer` per request, in its own thread, streaming
OpenAI-style chunks. `scripts/bench.py` measures our server against it.

    .venv/bin/python scripts/reference_server.py CHECKPOINT_DIR --port 8300
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Iterator

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer


def build_app(checkpoint: str, device: str = "cpu", dtype: str = "float32") -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype)).to(device).eval()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        ids = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt")
        input_ids = (ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids).to(device)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        temperature = float(body.get("temperature", 1.0))
        kwargs = dict(
            input_ids=input_ids,
            max_new_tokens=int(body.get("max_tokens") or 128),
            streamer=streamer,
            do_sample=temperature > 0,
        )
        if temperature > 0:
            kwargs["temperature"] = temperature
        result: dict[str, int] = {}

        def generate() -> None:
            with torch.inference_mode():
                out = model.generate(**kwargs)
            result["completion_tokens"] = int(out.shape[1] - input_ids.shape[1])

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()

        def events() -> Iterator[str]:
            cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
            for text in streamer:
                if text:
                    chunk = {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": "ref",
                        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
                    }
                    yield f"data: {json.dumps(chunk)}\n\n"
            thread.join()
            usage = {"prompt_tokens": int(input_ids.shape[1]), **result}
            last = {"id": cid, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            yield f"data: {json.dumps(last)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    app = build_app(args.checkpoint, args.device, args.dtype)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
