"""``/v1/chat/completions`` and ``/v1/models``."""

from __future__ import annotations

import random
import time
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from ftp_assets.domain.tokens import count_text_tokens

from .chat import BASE_MODEL_REPLY, BASE_MODELS, MODEL_ALIASES, fine_tuned_reply, within_tokens
from .responses import ApiError, not_found
from .store import Store, new_id
from .tokens import count_message_tokens, message_text
from .worker import ORGANIZATION_ID

DEFAULT_MAX_TOKENS = 512


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # tool calls and the like are accepted, not read

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict] | None = None
    name: str | None = None


class ChatRequest(BaseModel):
    """The parameters that shape a reply here. Others OpenAI knows (top_p, penalties, user, ...)
    are accepted and have no effect, as they would have none on an n-gram model."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    seed: int | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    n: int = Field(1, ge=1, le=8)
    stream: bool = False


def chat_router(store: Store) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def fine_tuned_models() -> dict[str, dict]:
        """Fine-tuned model id -> the succeeded job that made it."""
        return {job["fine_tuned_model"]: job for job in store.jobs() if job["status"] == "succeeded"}

    def model_object(model_id: str) -> dict:
        if model_id in BASE_MODELS:
            return {"id": model_id, "object": "model", "created": BASE_MODELS[model_id], "owned_by": "system"}
        job = fine_tuned_models().get(model_id)
        if job is None:
            raise not_found(f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        return {"id": model_id, "object": "model", "created": job["finished_at"], "owned_by": ORGANIZATION_ID}

    @router.get("/models")
    def list_models() -> dict:
        model_ids = [*BASE_MODELS, *fine_tuned_models()]
        return {"object": "list", "data": [model_object(model_id) for model_id in model_ids]}

    @router.get("/models/{model_id}")
    def retrieve_model(model_id: str) -> dict:
        return model_object(model_id)

    @router.post("/chat/completions")
    def create_chat_completion(request: ChatRequest) -> dict:
        if request.stream:
            raise ApiError(400, "Streaming is not emulated by the local service.", param="stream")
        model_id = MODEL_ALIASES.get(request.model, request.model)
        model_object(model_id)  # 404 for an unknown model
        messages = [message.model_dump(exclude_none=True) for message in request.messages]
        max_tokens = request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS
        if model_id in BASE_MODELS:
            replies = [within_tokens(BASE_MODEL_REPLY, max_tokens)] * request.n
        else:
            ngram = store.model(fine_tuned_models()[model_id]["id"])
            prompt = next((message_text(message) for message in reversed(messages) if message["role"] == "user"), "")
            # The same seed and prompt give the same reply; no seed, a fresh one each time.
            rng = random.Random(f"{request.seed}\n{prompt}") if request.seed is not None else random.Random()
            replies = [fine_tuned_reply(ngram, rng, request.temperature, max_tokens) for _ in range(request.n)]
        completion_tokens = sum(count_text_tokens(text) for text, _ in replies)
        prompt_tokens = count_message_tokens(messages)
        return {
            "id": new_id("chatcmpl-", 29),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "length" if cut_short else "stop",
                }
                for index, (text, cut_short) in enumerate(replies)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_local",
        }

    return router
