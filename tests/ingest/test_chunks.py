import json

import numpy as np
import pytest

from videokv.ingest.chunks import ChunkPlan, plan_chunks


def test_chunks_of_sixteen():
    plan = plan_chunks(np.arange(40.0), duration=39.5, chunk_frames=16, sample_fps=1.0)
    assert [(c.frame_start, c.frame_end) for c in plan] == [(0, 16), (16, 32), (32, 40)]
    assert [(c.t_start, c.t_end) for c in plan] == [(0, 16), (16, 32), (32, 39.5)]  # capped at duration
    assert plan.num_frames == 40 and plan[2].num_frames == 8
    assert plan.chunk_at(17.2).index == 1 and plan.chunk_at(99).index == 2


def test_last_chunk_ends_one_interval_after_last_frame():
    plan = plan_chunks(np.arange(0, 8, 0.5), duration=100.0, chunk_frames=4, sample_fps=2.0)
    assert plan[-1].t_end == 8.0


def test_irregular_timestamps_give_exact_spans():
    ts = [0.0, 0.1, 0.35, 1.2, 1.3, 2.6, 2.7]
    plan = plan_chunks(ts, duration=3.0, chunk_frames=3)
    assert [(c.t_start, c.t_end) for c in plan] == [(0.0, 1.2), (1.2, 2.7), (2.7, 2.875)]  # + median spacing


def test_json_round_trip():
    plan = plan_chunks(np.arange(10.0) * 0.5, duration=5.0, chunk_frames=4, sample_fps=2.0)
    again = ChunkPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan


def test_chunk_frames_groups_frames_and_the_last_chunk_is_shorter():
    plan = plan_chunks(np.arange(10.0), duration=10.0, chunk_frames=4)
    assert [c.num_frames for c in plan] == [4, 4, 2]
    with pytest.raises(ValueError):
        plan_chunks(np.arange(10.0), duration=10.0, chunk_frames=0)


def test_rejects_unsorted():
    with pytest.raises(ValueError):
        plan_chunks([0.0, 2.0, 1.0], duration=3.0, chunk_frames=2)
    assert len(plan_chunks([], duration=0.0, chunk_frames=2)) == 0
