"""Served models behind the adapter interface: any OpenAI-compatible chat-completions endpoint (vLLM, SGLang,
llama.cpp's server, hosted APIs), named `openai:<base url>#<model name>`.

Every DEMON sample is one chat request: one user turn whose content is the prompt's texts and images as `image_url`
parts in DEMON's order. The items are the ones the HF adapter gives its chat template (`render_hf_content`), so a
server that applies the model's template renders the text the in-process model sees; images go as base64 data URLs
of the files' own bytes (the pixels the in-process path decodes) or as `file://` URLs where the server may read
them. Greedy decoding is temperature 0; `max_tokens`, `temperature`, `top_p` and `seed` follow the eval settings.

    OpenAIAdapter(spec)  GET /models: the server is reachable, takes the key, serves the model (else one line)
    encode(request)      chat content; the first prompt with more images than any before is preceded by a probe
                         request with that many tiny images, so a server that takes no images, or fewer per prompt
                         (vLLM's --limit-mm-per-prompt), stops the run before any sample is sent
    load(encoded)        image URLs (a missing or undecodable image fails its sample, as in-process)
    generate(batch)      up to `concurrency` requests in flight; each retried with exponential backoff and full jitter
                         on 408/429/5xx, timeouts and dropped connections (Retry-After honoured), never on another
                         4xx; each answer goes into the response cache as it arrives, so a killed run re-sends nothing

A request that still fails (retries spent, a 4xx, a malformed or empty response) fails its sample with the reason:
the batch raises, the runner retries its samples one at a time, and the adapter answers those from what it has
already received, so nothing is sent twice and only the failed samples carry an error. The API key is read from the
environment only and masked (`components.security.redact`) in every message.
"""

from __future__ import annotations

import asyncio
import base64
import io
import mimetypes
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from components.errors import UserError
from components.evaluation.adapters.base import BLANK_GREY, Encoded, Loaded, ModelAdapter, Request, open_rgb
from components.evaluation.adapters.hf import render_hf_content
from components.security import MASK, credential_error, redact
from components.vpgc.generation import GenerationSettings

if TYPE_CHECKING:
    from components.evaluation.cache import ResponseCache

OPENAI_PREFIX = "openai:"
OPENAI_DEFAULT_MAX_NEW_TOKENS = 300  # the release's limit, as for HF models
REQUESTS_PER_SLOT = 8  # requests handed over per `generate` call, per request in flight: the pool rarely drains
SENT_AS_IS = ("image/png", "image/jpeg", "image/webp")  # what servers decode; other formats are re-encoded as PNG
PROBE_TEXT = "Reply with one word."
PROBE_SIZE = (32, 32)
SERVED_KEYS = ("id", "root", "parent", "max_model_len")  # what /models says about the weights (not `created`)
SERVING_HELP = "docs/evaluation.md (Served models)"


@dataclass(frozen=True)
class ServeOptions:
    """How requests reach a served model; none of it changes an answer, so none of it is in the fingerprint.

    Prices (USD per million prompt / completion tokens) only add a cost to the usage record."""

    concurrency: int = 16
    timeout_s: float = 600.0
    max_retries: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 600.0
    image_transport: str = "data"  # data (base64 in the request) | file (file:// URLs; the server must allow them)
    api_key_env: str = "OPENAI_API_KEY"
    price_input: float | None = None
    price_output: float | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_retries < 0 or min(self.timeout_s, self.backoff_s) <= 0:
            raise UserError("served model: --concurrency and --request-timeout must be positive, --max-retries >= 0")
        if self.image_transport not in ("data", "file"):
            raise UserError(f"--image-transport {self.image_transport!r}: use data or file")


@dataclass(frozen=True)
class Answer:
    text: str
    usage: tuple[int, int] | None  # (prompt tokens, completion tokens) as the server counted them


class ServedError(Exception):
    """A request that ended without an answer; the message is the sample's recorded error."""


def parse_spec(spec: str) -> tuple[str, str]:
    """`openai:<base url>#<model>` -> (base url, model name)."""
    url, sep, model = spec.removeprefix(OPENAI_PREFIX).partition("#")
    if not sep or not model or not url.startswith(("http://", "https://")):
        raise UserError(
            f"model {redact(spec)!r}: a served model is openai:<base url>#<model name>, e.g. "
            "openai:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-VL-7B-Instruct"
        )
    return url.rstrip("/"), model


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The server's requested wait: `retry-after-ms` (OpenAI's), `retry-after` in seconds or as an HTTP date."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            pass
    return None


def retryable(status: int) -> bool:
    """408 (request timeout), 429 (rate limit) and 5xx may pass; any other 4xx will not change on a resend."""
    return status in (408, 429) or status >= 500


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class OpenAIAdapter(ModelAdapter):
    """A model behind an OpenAI-compatible chat-completions endpoint (see the module docstring)."""

    kind = "openai"
    default_max_new_tokens = OPENAI_DEFAULT_MAX_NEW_TOKENS

    def __init__(
        self, spec: str, options: ServeOptions | None = None, placement: str = "auto", blind: bool = False
    ) -> None:
        import openai

        self.options = options or ServeOptions()
        self.base_url, self.model = parse_spec(spec)
        env = self.options.api_key_env
        key = os.environ.get(env)
        if key is None and env != ServeOptions.api_key_env:
            raise UserError(f"{redact(spec)}: --api-key-env names {env}, which is not set; export it first")
        self._key = key or "EMPTY"  # servers started without --api-key take any key; the client needs one
        self._sync = openai.OpenAI(base_url=self.base_url, api_key=self._key, timeout=self.options.timeout_s,
                                   max_retries=self.options.max_retries)  # fmt: skip
        self._client: openai.AsyncOpenAI | None = None
        self._loop = asyncio.new_event_loop()  # one loop for the run: the client's connections are reused
        # The server renders its own template: `first` sends the paper's fallback (images first, [Image k]); `auto`
        # cannot ask the template, so it interleaves (`demonlab agree` matches an HF model's choice).
        self.interleaved = placement != "first"
        served = self._preflight(spec)
        config = {
            "base_url": redact(self.base_url),
            "model": self.model,
            "served": served,
            "placement": "interleaved" if self.interleaved else "fallback",
        }
        super().__init__(redact(spec), config, nn.Module(), blind)  # no weights here: the server holds them
        self.batch_size = REQUESTS_PER_SLOT * self.options.concurrency
        self._probed_images = 0
        self._cache: ResponseCache | None = None
        self._generation_key = ""
        self._input_keys: dict[str, str] = {}
        self._usage: dict[str, tuple[int, int]] = {}
        self._received: dict[tuple[str, GenerationSettings], Answer | ServedError] = {}

    # -- what the run records ---------------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """sha256 of the kind, the config (URL, model name, what /models says about it, placement) and blindness."""
        if self._fingerprint is None:
            import hashlib
            import json

            head = json.dumps({"kind": self.kind, "config": self.config, "blind": self.blind}, sort_keys=True)
            self._fingerprint = hashlib.sha256(head.encode()).hexdigest()
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # images are read and encoded on the host; the model runs on the server

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "usage": self.usage()}

    def usage(self) -> dict[str, Any]:
        """Token usage of every answered sample (this run's and the cached ones') and in total; cost with prices."""
        per_sample = {uid: list(self._usage[uid]) for uid in sorted(self._usage)}
        prompt = sum(p for p, _ in per_sample.values())
        completion = sum(c for _, c in per_sample.values())
        prices = self.options.price_input, self.options.price_output
        priced = all(price is not None for price in prices)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "samples": len(per_sample),
            "prices_usd_per_million": {"prompt": prices[0], "completion": prices[1]} if priced else None,
            "cost_usd": round((prompt * prices[0] + completion * prices[1]) / 1e6, 6) if priced else None,
            "per_sample": per_sample,
        }

    def use_cache(self, cache: ResponseCache, generation_key: str) -> None:
        self._cache, self._generation_key = cache, generation_key

    def _clean(self, text: str) -> str:
        """`text` safe to record: secrets masked, the key too if its variable's name does not look secret."""
        text = redact(text)
        return text.replace(self._key, MASK) if len(self._key) >= 8 else text

    # -- before the run: can this server answer DEMON? ---------------------------------------------------------

    def _preflight(self, spec: str) -> dict[str, Any] | None:
        """What the server's /models says about the model; one-line errors for the mistakes a user can fix."""
        import openai

        where = redact(self.base_url)
        try:
            listed = self._sync.models.list().data
        except openai.NotFoundError:
            return None  # a server without /models: the first probe tells whether the model exists
        except openai.APIStatusError as error:
            raise self._status_error(error) from None
        except openai.APIConnectionError as error:
            raise UserError(
                f"{where}: cannot reach the server ({self._clean(str(error.__cause__ or error))}); start it "
                f"({SERVING_HELP}) or fix the URL (vLLM and SGLang serve under .../v1)"
            ) from None
        ids = [entry.id for entry in listed]
        if self.model not in ids:
            shown = ", ".join(ids[:10]) or "none"
            raise UserError(
                f"{where} serves no model {self.model!r} (it serves: {shown}); use openai:{where}#<one of them>, "
                "or start the server with the name you gave (vLLM: --served-model-name)"
            )
        entry = listed[ids.index(self.model)].model_dump()
        return {key: entry[key] for key in SERVED_KEYS if entry.get(key) is not None}

    def _status_error(self, error: Any) -> UserError:
        status = error.status_code
        message = self._clean(str(error.message))
        if status in (401, 403):
            return credential_error(self.base_url, status, f"set {self.options.api_key_env} to its API key")
        if status == 404:
            return UserError(f"{redact(self.base_url)}: no model {self.model!r} there (HTTP 404: {message:.300})")
        return UserError(f"{redact(self.base_url)} answered HTTP {status} ({message:.300})")

    def _probe(self, images: int) -> None:
        """A one-token request with `images` tiny images; a refusal stops the run naming the server option."""
        import openai
        from PIL import Image

        url = data_url("image/png", png_bytes(Image.new("RGB", PROBE_SIZE, BLANK_GREY)))
        content = [{"type": "text", "text": PROBE_TEXT}] + [{"type": "image_url", "image_url": {"url": url}}] * images
        try:
            self._sync.chat.completions.create(model=self.model, messages=[{"role": "user", "content": content}],
                                               max_tokens=1, temperature=0.0)  # fmt: skip
        except openai.APIStatusError as error:
            if error.status_code not in (400, 413, 422):
                raise self._status_error(error) from None
            refusal = f"HTTP {error.status_code}: {self._clean(str(error.message)):.200}"
            if images == 1:
                raise UserError(
                    f"{redact(self.base_url)} refused a prompt with an image ({refusal}); serve a vision-language "
                    f"model (llama.cpp: llama-server --mmproj <projector.gguf>; {SERVING_HELP})"
                ) from None
            raise UserError(
                f"{redact(self.base_url)} refused a prompt with {images} images ({refusal}); DEMON prompts here carry "
                f"up to {images}: start vLLM with --limit-mm-per-prompt '{{\"image\": {images}}}' (or more; "
                f"{SERVING_HELP}), or choose tasks with fewer images"
            ) from None
        except openai.APIConnectionError as error:
            raise UserError(
                f"{redact(self.base_url)}: the server stopped answering ({self._clean(str(error))})"
            ) from None

    # -- the adapter interface ---------------------------------------------------------------------------------

    def encode(self, request: Request) -> Encoded:
        from components.evaluation.inference import input_key, prompt_sha256  # inference imports the adapters

        content, images = render_hf_content(request.parts, self.interleaved)
        if len(images) > self._probed_images:
            if self._probed_images == 0 and len(images) > 1:
                self._probe(1)  # tells "takes no images" from "takes fewer"
            self._probe(len(images))
            self._probed_images = len(images)
        if self._cache is not None:
            key = input_key(prompt_sha256(request.parts), request.image_paths())
            self._input_keys[request.uid] = key
            found = self._cache.get_usage(self.fingerprint, self._generation_key, [key])
            if key in found:
                self._usage[request.uid] = found[key]
        text_chars = sum(len(item.get("text", "")) for item in content)
        return Encoded(request, text_chars // 4 + 64 * len(images), content)  # ~4 characters a token

    def load(self, encoded: Encoded) -> Loaded:
        return Loaded(encoded, [self._image_url(path) for path in encoded.request.image_paths()])

    def _image_url(self, path: Path) -> str:
        image = open_rgb(path)  # a missing or undecodable image fails its sample before anything is sent
        if self.blind:  # generated pixels: always a data URL
            from PIL import Image

            return data_url("image/png", png_bytes(Image.new("RGB", image.size, BLANK_GREY)))
        if self.options.image_transport == "file":
            return path.resolve().as_uri()
        mime = mimetypes.guess_type(path.name)[0]
        return data_url(mime, path.read_bytes()) if mime in SENT_AS_IS else data_url("image/png", png_bytes(image))

    def generate(self, batch: Sequence[Loaded], settings: GenerationSettings) -> list[str]:
        keys = [(item.encoded.request.uid, settings) for item in batch]
        todo = [item for item, key in zip(batch, keys, strict=True) if key not in self._received]
        if todo:
            self._loop.run_until_complete(self._send_all(todo, settings))
        failed = [(key[0], self._received[key]) for key in keys if isinstance(self._received[key], ServedError)]
        if failed and len(batch) > 1:  # kept: the runner retries each sample alone and gets these answers back
            uid, error = failed[0]
            raise ServedError(f"{len(failed)} of {len(batch)} requests failed (first: {uid}: {error})")
        results = [self._received.pop(key) for key in keys]
        if failed:
            raise results[0]  # type: ignore[misc]
        return [result.text for result in results]  # type: ignore[union-attr]

    # -- requests ----------------------------------------------------------------------------------------------

    async def _send_all(self, batch: Sequence[Loaded], settings: GenerationSettings) -> None:
        import openai

        if self._client is None:  # created inside the loop it will run on
            self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._key,
                                              timeout=self.options.timeout_s, max_retries=0)  # fmt: skip
        slots = asyncio.Semaphore(self.options.concurrency)

        async def one(item: Loaded) -> None:
            async with slots:
                result = await self._request(item, settings)
            uid = item.encoded.request.uid
            self._received[(uid, settings)] = result
            if isinstance(result, Answer):
                self._record(uid, result)

        await asyncio.gather(*(one(item) for item in batch))

    def _record(self, uid: str, answer: Answer) -> None:
        """Keep the answer's usage; store the answer in the response cache now, not at the end of the batch."""
        if answer.usage is not None:
            self._usage[uid] = answer.usage
        key = self._input_keys.get(uid)
        if self._cache is not None and key is not None:
            self._cache.put_many(self.fingerprint, self._generation_key, [(key, uid, answer.text)])
            if answer.usage is not None:
                self._cache.put_usage(self.fingerprint, self._generation_key, [(key, *answer.usage)])

    def _body(self, item: Loaded, settings: GenerationSettings) -> dict[str, Any]:
        urls = iter(item.pixels)
        content = [{"type": "image_url", "image_url": {"url": next(urls)}} if part["type"] == "image" else part
                   for part in item.encoded.payload]  # fmt: skip
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature if settings.do_sample else 0.0,
            "top_p": settings.top_p if settings.do_sample else 1.0,
            "seed": settings.seed,
        }
        if settings.stop:
            body["stop"] = list(settings.stop)
        return body

    async def _request(self, item: Loaded, settings: GenerationSettings) -> Answer | ServedError:
        import openai

        body = self._body(item, settings)
        for attempt in range(self.options.max_retries + 1):
            wait = None
            try:
                completion = await self._client.chat.completions.create(**body)  # type: ignore[union-attr]
            except openai.APIStatusError as error:
                reason = f"HTTP {error.status_code}: {self._clean(str(error.message)):.300}"
                if not retryable(error.status_code):
                    return ServedError(f"the server refused the request ({reason})")
                wait = retry_after_s(error.response.headers)
            except openai.APITimeoutError:
                reason = f"no answer within {self.options.timeout_s:g} s"
            except openai.APIConnectionError as error:
                reason = f"connection lost ({self._clean(str(error.__cause__ or error)):.200})"
            except (openai.APIResponseValidationError, ValueError) as error:  # ValueError: a body that is not JSON
                return ServedError(f"malformed response ({type(error).__name__}: {self._clean(str(error)):.200})")
            else:
                return self._answer(completion)
            if attempt == self.options.max_retries:
                return ServedError(f"{reason}; gave up after {attempt + 1} attempts")
            await asyncio.sleep(self._delay(attempt, wait))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """The server's Retry-After where it gave one (capped), else exponential backoff with full jitter."""
        if retry_after is not None:
            return min(retry_after, self.options.max_retry_after_s)
        return random.uniform(0.0, min(self.options.backoff_max_s, self.options.backoff_s * 2.0**attempt))

    @staticmethod
    def _answer(completion: Any) -> Answer | ServedError:
        """The reply's text and usage; a reply without a message is its sample's error (an empty text is an answer,
        scored as an empty answer is)."""
        choices = getattr(completion, "choices", None)
        if not choices:
            return ServedError("empty response (no choices)")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str):
            finish = getattr(choices[0], "finish_reason", None)
            return ServedError(f"empty response (no message text; finish_reason {finish!r})")
        usage = getattr(completion, "usage", None)
        counts = (getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
        valid = all(isinstance(count, int) for count in counts)
        return Answer(content.strip(), counts if valid else None)  # type: ignore[arg-type]
