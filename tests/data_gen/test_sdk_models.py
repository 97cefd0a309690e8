"""The SDK's per-call pydantic wrapper classes are built once per type, and values come out exactly as before."""

from __future__ import annotations

import json

import pydantic
from mistralai.client import models
from mistralai.client.utils import serializers

from data_gen import client, sdk_models  # noqa: F401  (importing the client installs the cache)

REPLY = json.dumps({  # a chat completion as the API sends it: prose around the JSON, usage, extra fields
    "id": "cmpl-7f3a", "object": "chat.completion", "created": 1764590000, "model": "open-mistral-7b",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "tool_calls": None, "prefix": False,
        "content": 'Sure! ```json\n{"Thought_Process": "step 1: …", "label": "1"}\n```'}}],
    "usage": {"prompt_tokens": 91, "completion_tokens": 40, "total_tokens": 131, "prompt_audio_seconds": None},
})


def test_the_client_installs_the_cache():
    assert sdk_models.install() is True
    assert serializers.create_model is sdk_models._cached_create_model


def test_unmarshal_reuses_one_class_per_type_and_gives_the_same_value(monkeypatch):
    cached = serializers.unmarshal_json(REPLY, models.ChatCompletionResponse)
    size = len(sdk_models._cache)
    again = serializers.unmarshal_json(REPLY, models.ChatCompletionResponse)
    assert len(sdk_models._cache) == size  # no new class the second time
    monkeypatch.setattr(serializers, "create_model", pydantic.create_model)  # the SDK as shipped
    plain = serializers.unmarshal_json(REPLY, models.ChatCompletionResponse)
    assert cached.model_dump() == again.model_dump() == plain.model_dump()
    assert cached.choices[0].message.content.startswith("Sure!")


def test_marshal_json_is_unchanged(monkeypatch):
    request = models.ChatCompletionRequest(model="open-mistral-7b",
                                           messages=[models.UserMessage(content="Premise: A cat sleeps.")])
    cached = serializers.marshal_json(request, models.ChatCompletionRequest)
    monkeypatch.setattr(serializers, "create_model", pydantic.create_model)
    assert cached == serializers.marshal_json(request, models.ChatCompletionRequest)


def test_unhashable_arguments_build_afresh():
    a = sdk_models._cached_create_model("M", body=(list[int], []))  # a list default cannot be a cache key
    b = sdk_models._cached_create_model("M", body=(list[int], []))
    assert a is not b and a(body=[1]).body == [1] and b().body == []
