"""The request and answer shapes of the OpenAI API that migaki serves, and its error format.
Clients send more fields than a server uses (`user`, `logprobs`, ...): unknown fields are
ignored, as OpenAI's own server does, and only the ones that change an answer are read."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

STOP_STRINGS = 4  # OpenAI's limit


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def plain(self) -> dict[str, str]:
        """The message as the chat template reads it (`developer` is OpenAI's new name for
        `system`; text parts joined)."""
        text = (
            self.content
            if isinstance(self.content, str)
            else "".join(part.text for part in self.content)
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class Generation(BaseModel):
    """What both endpoints share. No temperature means greedy decoding, as `migaki eval`
    measured the model (OpenAI's own default is 1.0: send it to sample)."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(max_length=200)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > STOP_STRINGS:
            raise ValueError(f"at most {STOP_STRINGS} stop strings")
        return stop

    @field_validator("n")
    @classmethod
    def _one_answer(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is served (send the request again for more answers)")
        return n

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatRequest(Generation):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(Generation):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("one prompt per request")
        return prompt

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(min_length=1, max_length=200)
    rating: Literal["up", "down"] | None = None
    correction: str | None = Field(None, max_length=20000)


class AdapterRequest(BaseModel):
    """Load a run's adapter: `run` names a run directory inside the server's --runs folder
    (a name, never a path), `name` what requests call it (default: the run's name)."""

    model_config = ConfigDict(extra="forbid")
    run: str = Field(min_length=1, max_length=200)
    name: str | None = Field(None, max_length=100)


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


def error_body(status: int, message: str, code: str | None = None, param: str | None = None):
    """OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""
    kind = ERROR_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
