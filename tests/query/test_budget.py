"""The context budget: a question's context never takes more positions than the budget, at any
length and however small the budget; past bi-level, the pyramid keeps a gist of every group
while the budget allows, and `drop` keeps the most relevant chunks."""

import numpy as np
import pytest

from tests.conftest import make_runtime
from videokv.query.budget import ChunkCosts, Layout, bilevel, chunk_costs, plan
from videokv.query.engine import ContextTooLong

QUESTION = "What digit was shown on the red card?"


def random_costs(rng, n: int, group: int) -> ChunkCosts:
    L = rng.integers(20, 80, n)
    H = rng.integers(1, 12, n)
    G = {g: int(rng.integers(1, 10)) for g in range(0, n, group)}
    return ChunkCosts(int(rng.integers(5, 40)), L, H, G, group)


def recount(costs: ChunkCosts, layout: Layout) -> int:
    table = {"L": costs.L, "H": costs.H}
    return costs.prefix + sum(int(costs.G[i]) if lvl == "G" else int(table[lvl][i]) for i, lvl in layout.parts)


def covered(layout: Layout, n: int) -> list[int]:
    """How many parts cover each chunk."""
    out = [0] * n
    for i, lvl in layout.parts:
        for c in (range(i, min(i + layout.group, n)) if lvl == "G" else (i,)):
            out[c] += 1
    return out


@pytest.mark.parametrize("policy", ["pyramid", "drop"])
def test_a_layout_never_exceeds_its_budget(policy):
    rng = np.random.default_rng(0)
    for trial in range(300):
        n, group = int(rng.integers(1, 80)), int(rng.integers(1, 9))
        costs = random_costs(rng, n, group)
        ranked = list(dict.fromkeys(rng.integers(0, n, int(rng.integers(0, 6))).tolist()))
        scores = rng.normal(size=n)
        full = bilevel(costs, set(ranked)).tokens
        for budget in (costs.prefix, costs.prefix + 1, costs.prefix + int(rng.integers(0, full)), full - 1, full):
            lay = plan(costs, ranked, scores, budget, policy, open_groups=int(rng.integers(0, 10)))
            assert lay.tokens == recount(costs, lay) <= max(budget, costs.prefix), (trial, budget)
            assert [i for i, _ in lay.parts] == sorted(i for i, _ in lay.parts)          # temporal order
            assert max(covered(lay, n), default=0) <= 1                                 # no chunk twice
            assert all(i in ranked for i, lvl in lay.parts if lvl == "L")
            levels = lay.levels()
            assert sum(levels.values()) == n
            if budget >= full:
                assert lay.policy == "bilevel" and levels["dropped"] == levels["G"] == 0
            if policy == "pyramid" and budget >= costs.prefix + sum(int(costs.L[i]) for i in ranked) + sum(
                    costs.G.values()) + sum(int(costs.H[i]) for i in range(n)):
                assert levels["dropped"] == 0                 # room for a gist of every group: nothing lost


def test_the_pyramid_spends_by_relevance():
    n, group = 32, 4
    costs = ChunkCosts(10, np.full(n, 40), np.full(n, 8), {g: 4 for g in range(0, n, group)}, group)
    scores = np.zeros(n)
    scores[[13, 22]] = [0.9, 0.8]                        # the next-best chunks: groups 12 and 20
    ranked = [5, 0, 31]                                  # top-1, then first and last
    budget = bilevel(costs, set(ranked)).tokens - 1
    lay = plan(costs, ranked, scores, budget, "pyramid", open_groups=4)
    lv = {i: lay.level_of(i) for i in range(n)}
    assert [i for i in range(n) if lv[i] == "L"] == [0, 5, 31]
    assert all(lv[i] == "H" for i in (1, 2, 3, 4, 6, 7, 28, 29, 30))     # the rest of their groups
    assert all(lv[i] == "H" for i in range(12, 16))                      # the best other group, opened
    assert all(lv[i] == "G" for i in range(20, 24))                      # open_groups=4 reached: a gist
    assert lay.levels()["dropped"] == 0 and lay.tokens <= budget
    drop = plan(costs, ranked, scores, 10 + 3 * 40 + 3 * 8, "drop")
    # L for the ranked, then H by relevance: 13, 22, then the first of the equally scored
    assert [(i, lvl) for i, lvl in drop.parts] == [(0, "L"), (1, "H"), (5, "L"), (13, "H"), (22, "H"), (31, "L")]


@pytest.fixture(scope="module")
def grouped(tmp_path_factory, toy_video, embedded_backend):
    """The toy video (6 chunks) ingested with gist groups of 2."""
    rt = make_runtime(tmp_path_factory.mktemp("home"), gist_chunks=2, top_k=1)
    rt.backend = embedded_backend
    return rt, rt.pipeline.ingest(toy_video[0]).video_id


def test_asked_under_a_small_budget_the_context_fits_and_says_what_it_holds(grouped):
    rt, vid = grouped
    q = rt.queries
    costs = chunk_costs(rt.store, rt.backend, vid)
    assert sorted(costs.G) == [0, 2, 4] and costs.group == 2
    free = q.ask(vid, QUESTION, max_new_tokens=2)
    assert free.policy == "bilevel" and free.levels["G"] == free.levels["dropped"] == 0
    assert free.context_budget == 8192 - len(rt.backend.tokenize(
        rt.backend.prompt_parts(rt.config.system_prompt, QUESTION)[1])) - 2
    for policy in ("pyramid", "drop"):
        q.budget_policy = policy
        for budget in (free.context_tokens - 1, costs.prefix + 150, costs.prefix + 20, costs.prefix):
            q.context_budget = budget
            ans = q.ask(vid, QUESTION, max_new_tokens=2)
            assert ans.context_tokens <= budget and ans.context_budget == budget, (policy, budget)
            assert ans.policy == policy and sum(ans.levels.values()) == 6 and ans.video_prefill_runs == 0
            if budget == free.context_tokens - 1:
                assert ans.levels["dropped" if policy == "drop" else "G"] > 0
            assert ans.answer is not None
    q.context_budget = costs.prefix - 1
    with pytest.raises(ContextTooLong, match="does not hold even the prompt prefix"):
        q.ask(vid, QUESTION, max_new_tokens=2)
    q.context_budget, q.budget_policy = None, "pyramid"
