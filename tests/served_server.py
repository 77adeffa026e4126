"""An OpenAI-compatible chat-completions server for the tests and the benchmark, on 127.0.0.1 only.

    python tests/served_server.py --model <hf folder> [--name tiny] [--api-key-env VAR] [--max-images N]
    python tests/served_server.py --echo --latency 0.2        # no model: a fixed-latency answer (throughput)

It prints `PORT <n>` once listening. With `--model` it answers as vLLM does for an HF model: the request's content
items become the processor's chat-template items (`image_url` -> an image, decoded from its data or file URL) and the
model generates through `HFAdapter.generate`, so a served answer can equal the in-process one. Test controls:

    POST /_faults {"mode": M, "count": n, "retry_after": s, "delay": s}   the next n DEMON requests get fault M:
         429 (with Retry-After), 500, 400, slow (answer after `delay`), drop (close the connection unanswered),
         malformed (a body that is not JSON), empty (no choices)
    POST /_prefix {"prefix": "..."}    prepended to every request's first text (a deliberately different prompt)
    GET  /_log                         every DEMON request: {t, prompt (sha256 of its items), images, fault}
    POST /_reset                       faults, prefix and log cleared

Probe requests (`openai_chat.PROBE_TEXT`) are answered without faults or logging: they are not samples.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from components.evaluation.adapters.openai_chat import PROBE_TEXT


class State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.key = os.environ.get(args.api_key_env) if args.api_key_env else None
        self.lock = threading.Lock()  # the model answers one request at a time; the state is shared
        self.fault: dict[str, Any] = {}
        self.prefix = ""
        self.log: list[dict[str, Any]] = []
        self.adapter = None
        if args.model:
            import torch

            from components.evaluation.adapters import HFAdapter

            torch.set_num_threads(1)
            self.adapter = HFAdapter.from_pretrained(f"hf:{args.model}")

    def take_fault(self) -> dict[str, Any] | None:
        with self.lock:
            if self.fault.get("count", 0) <= 0:
                return None
            self.fault["count"] -= 1
            return dict(self.fault)


def decode_image(url: str) -> Any:
    from PIL import Image

    if url.startswith("data:"):
        data = base64.b64decode(url.partition(",")[2])
    else:
        data = Path(unquote(urlparse(url).path)).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers
    state: State

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(OSError):  # the client gave up (a slow reply past its timeout)
            self.wfile.write(data)

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.reply(status, {"error": {"message": message, "type": "invalid_request_error"}}, headers)

    def do_GET(self) -> None:
        if self.path == "/_log":
            with self.state.lock:
                self.reply(200, list(self.state.log))
        elif self.path == "/v1/models" and self.authorized():
            root = self.state.args.model or "echo"
            self.reply(200, {"object": "list", "data": [{"id": self.state.args.name, "object": "model", "created": 0,
                                                         "owned_by": "test", "root": root}]})  # fmt: skip
        elif self.path != "/v1/models":
            self.error(404, f"no route {self.path}")

    def body(self) -> dict[str, Any]:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

    def authorized(self) -> bool:
        key = self.state.key
        given = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if key and given != key:  # echoes the key it was given, as some servers do: the client must mask it
            self.error(401, f"Incorrect API key provided: {given}")
            return False
        return True

    def do_POST(self) -> None:
        state = self.state
        if self.path in ("/_faults", "/_prefix", "/_reset"):
            body = self.body()
            with state.lock:
                if self.path == "/_faults":
                    state.fault = body
                elif self.path == "/_prefix":
                    state.prefix = body["prefix"]
                else:
                    state.fault, state.prefix, state.log = {}, "", []
            self.reply(200, {})
            return
        if self.path != "/v1/chat/completions":
            self.error(404, f"no route {self.path}")
            return
        request = self.body()
        if not self.authorized():
            return
        if request.get("model") != state.args.name:
            self.error(404, f"The model `{request.get('model')}` does not exist.")
            return
        content = request["messages"][0]["content"]
        images = [item["image_url"]["url"] for item in content if item["type"] == "image_url"]
        if images and state.args.no_images:
            self.error(400, "This model does not support image input.")
            return
        if len(images) > state.args.max_images:
            self.error(400, f"At most {state.args.max_images} image(s) may be provided in one request.")
            return
        if content[0].get("text") == PROBE_TEXT:
            self.answer(request, "ok", 1, 1)
            return
        fault = state.take_fault()
        identity = json.dumps([item.get("text", "image") for item in content])
        with state.lock:
            state.log.append({"t": time.time(), "prompt": hashlib.sha256(identity.encode()).hexdigest(),
                              "images": len(images), "fault": fault and fault["mode"]})  # fmt: skip
        if fault and self.faulted(fault):
            return
        time.sleep(state.args.latency)
        if state.adapter is None:
            self.answer(request, f"echo {hashlib.sha256(identity.encode()).hexdigest()[:12]}", 10 + 64 * len(images), 3)
        else:
            self.answer(request, *self.generate(request, content, images))

    def faulted(self, fault: dict[str, Any]) -> bool:
        """Apply `fault`; True when the request is done with (no normal answer follows)."""
        mode = fault["mode"]
        if mode == "429":
            self.error(429, "Rate limit reached", {"Retry-After": str(fault.get("retry_after", 1))})
        elif mode in ("400", "500"):
            self.error(int(mode), "the test server failed this request on purpose")
        elif mode == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif mode == "malformed":
            self.reply(200, b'{"id": "x", "choices": [{"message": ')
        elif mode == "empty":
            self.reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []})
        elif mode == "slow":
            time.sleep(fault["delay"])
            return False
        return True

    def generate(self, request: dict[str, Any], content: list[dict], images: list[str]) -> tuple[str, int, int]:
        """The HF model's answer to the request as the in-process adapter would give it (one user turn through the
        processor's chat template), and its usage."""
        from components.evaluation.adapters import Encoded, Loaded, Request
        from components.vpgc.generation import GenerationSettings

        adapter, prefix = self.state.adapter, self.state.prefix
        items = [{"type": "image"} if item["type"] == "image_url" else dict(item) for item in content]
        first_text = next(item for item in items if item["type"] == "text")
        first_text["text"] = prefix + first_text["text"]
        text = adapter.processor.apply_chat_template([{"role": "user", "content": items}], add_generation_prompt=True,
                                                     tokenize=False)  # fmt: skip
        loaded = Loaded(Encoded(Request("served", []), 0, text), [decode_image(url) for url in images])
        sampling = request.get("temperature", 1.0) > 0
        settings = GenerationSettings(max_new_tokens=request["max_tokens"], do_sample=sampling,
                                      temperature=request.get("temperature") or 1.0, top_p=request.get("top_p", 1.0),
                                      seed=request.get("seed", 0))  # fmt: skip
        with self.state.lock:
            prompt_tokens = int(adapter.inputs([loaded])["input_ids"].shape[1])
            answer = adapter.generate([loaded], settings)[0]
        return answer, prompt_tokens, len(adapter.tokenizer(answer, add_special_tokens=False).input_ids)

    def answer(self, request: dict[str, Any], text: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.reply(200, {
            "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a Hugging Face image-text-to-text folder (save_pretrained)")
    parser.add_argument("--echo", action="store_true", help="no model: answer a digest of the prompt")
    parser.add_argument("--name", default="tiny", help="the served model name")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every DEMON request")
    parser.add_argument("--api-key-env", help="require the key this environment variable holds")
    parser.add_argument("--max-images", type=int, default=64, help="images per prompt, as vLLM's limit")
    parser.add_argument("--no-images", action="store_true", help="refuse every image (a text-only model)")
    args = parser.parse_args()
    if not (args.model or args.echo):
        parser.error("give --model or --echo")
    Handler.state = State(args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
