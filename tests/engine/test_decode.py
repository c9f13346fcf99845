from videokv.engine.batch import generate
from videokv.engine.config import EngineConfig
from videokv.engine.decode import GenerationConfig, assemble
from videokv.engine.prefill import ChunkPrefiller


def answer(be, question, **gen):
    pre = ChunkPrefiller(be, EngineConfig(system_prompt="You are a helpful assistant."))
    cache = assemble(be, [pre.prefix()])
    _, suffix = be.prompt_parts("You are a helpful assistant.", question)
    return list(generate(be, cache, suffix, GenerationConfig(**gen)))


def test_embedded_model_answers_from_its_stored_prefix(embedded_backend):
    pieces = answer(embedded_backend, "What is the capital of France? Answer in one word.", max_new_tokens=12)
    assert "paris" in "".join(pieces).lower()


def test_max_tokens_and_stop_strings(embedded_backend):
    q = "What are the primary colors?"
    free = "".join(answer(embedded_backend, q, max_new_tokens=40))
    assert "," in free
    pieces = answer(embedded_backend, q, max_new_tokens=3)
    assert len(pieces) <= 3
    stopped = "".join(answer(embedded_backend, q, max_new_tokens=40, stop=(",",)))
    assert "," not in stopped and free.startswith(stopped)


def test_sampling_is_seeded(embedded_backend):
    q = "Write a short poem about the sea."
    a = answer(embedded_backend, q, max_new_tokens=10, temperature=1.0, seed=3)
    b = answer(embedded_backend, q, max_new_tokens=10, temperature=1.0, seed=3)
    assert a == b
