"""Request bodies (validated: a bad body is a 422 problem, never a 500)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from videokv.query.engine import COUNT_BY, MODES

Mode = Literal[MODES]
Question = Field(min_length=1, max_length=4000, description="the question (at most VIDEOKV_MAX_QUESTION_CHARS)")


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Question
    top_k: int | None = Field(None, ge=1, le=256, description="chunks re-loaded at L level (default: settings)")
    mode: Mode = "bilevel"
    count_by: Literal[COUNT_BY] | None = Field(
        None, description='who answers "how many times" questions: the span counter over the oracle\'s frame '
                          'scores ("oracle", the default where calibrated) or the LLM ("lm")')
    max_new_tokens: int = Field(48, ge=1, le=1024)
    stream: bool = Field(False, description="stream tokens as server-sent events")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Question
    video_ids: list[str] | None = Field(None, max_length=1000)
    top_k: int = Field(10, ge=1, le=1000)


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    video_ids: list[str] = Field(min_length=1, max_length=1000)
    questions: list[str] = Field(min_length=1, max_length=1000)
    top_k: int | None = Field(None, ge=1, le=256)
    mode: Mode = "bilevel"
    max_new_tokens: int = Field(48, ge=1, le=1024)
