"""Storage codecs (kvstore/codecs.py) through the blob format: every codec round-trips within
its documented bound on random KVs with outlier channels and on real ones; a blob says its
codec and cannot be read as another; a flipped scale byte is a checksum error; token rows
dequantize alone exactly as in the whole; a codec store answers as the plain one."""

from __future__ import annotations

import pytest
import torch

from videokv.engine.config import EngineConfig
from videokv.kvstore import blob as blobfmt
from videokv.kvstore.codecs import CODECS, NAMES, codec_named, row_count
from videokv.kvstore.errors import CorruptBlobError

CODEC_NAMES = list(CODECS)


def random_kv(tokens: int = 37, seed: int = 0) -> torch.Tensor:
    """[layers, 2, kv_heads, tokens, head_dim] with large key channels (as pre-RoPE keys have)."""
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(3, 2, 2, tokens, 64, generator=g) * 2
    kv[:, 0, :, :, 5] += 40
    kv[:, 0, :, :, 17] *= 12
    return kv


def roundtrip(kv: torch.Tensor, codec) -> tuple[blobfmt.BlobView, torch.Tensor]:
    kinds = torch.zeros(kv.shape[3], dtype=torch.uint8)
    buf = blobfmt.encode(kv[:, 0], kv[:, 1], kinds, codec=codec)
    view = blobfmt.decode(bytes(buf))
    return view, view.take()


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("groups", [(0, 0), (16, 16)])
def test_codecs_round_trip_within_their_documented_bound(name, groups, ingested):
    codec = codec_named(name, *groups)
    rt, res = ingested
    with rt.store.reader() as r:                      # real KVs: a chunk at L and at H
        real = [r.blob(res.video_id, 1, lvl).take() for lvl in ("L", "H")]
    for kv in [random_kv(), random_kv(tokens=5, seed=1), *real]:
        view, back = roundtrip(kv, codec)
        assert view.header.codec == codec and back.dtype == kv.dtype and back.shape == kv.shape
        err = (back - kv).abs()
        assert (err <= codec.bound(view.parts, kv)).all(), (name, groups, err.max().item())
        # Some rows alone (what a question pages at H) are the same rows of the whole.
        rows = torch.tensor([kv.shape[3] - 1, 0, kv.shape[3] // 2])
        assert torch.equal(view.take(rows), back.index_select(3, rows))
        out = torch.full((kv.shape[0], 2, kv.shape[2], 3, kv.shape[4]), float("nan"))
        assert torch.equal(view.take_into(out, rows), back.index_select(3, rows))
        assert_runs_are_the_same_rows(view, back)


def assert_runs_are_the_same_rows(view, back):
    """Rows given as a slice (taken as views) or as the same indices (gathered) come back
    alike, into a slice of a larger buffer, leaving the rest of it alone."""
    L, _, H, _, D = back.shape
    for run in (slice(1, 4), torch.arange(1, 4)):
        assert torch.equal(view.take(run), back[:, :, :, 1:4])
        hot = torch.full((L, 2, H, 7, D), float("nan"))
        view.take_into(hot[:, :, :, 2:5], run)
        assert torch.equal(hot[:, :, :, 2:5], back[:, :, :, 1:4]) and hot[:, :, :, [0, 1, 5, 6]].isnan().all()
    taken = view.take(slice(1, 4))
    taken.zero_()                                           # a copy: the stored blob is untouched
    assert torch.equal(view.take(slice(1, 4)), back[:, :, :, 1:4])


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("groups", [(0, 0), (0, 16), (8, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_hot_set_decoded_together_equals_blob_by_blob(name, groups, dtype):
    """decode_many (a hot set: blobs one after another, each with its rows) is decode_into
    blob by blob, bit for bit: runs of equal and unequal lengths, all rows, a run of rows,
    scattered rows and a blob with none."""
    codec = codec_named(name, *groups)
    tokens = [15, 15, 15, 9, 15, 15, 4, 15]
    kvs = [random_kv(tokens=t, seed=i).to(dtype) for i, t in enumerate(tokens)]
    items = [(codec.encode(kv), rows) for kv, rows in zip(kvs, [
        None, slice(7, 15), torch.arange(7, 15), torch.tensor([8, 0, 3]), slice(7, 15),
        torch.arange(0, 0), None, slice(7, 15)])]
    total = sum(row_count(rows, kv.shape[3]) for kv, (_, rows) in zip(kvs, items))
    L, _, H, _, D = kvs[0].shape
    together = codec.decode_many(items, torch.full((L, 2, H, total + 2, D), float("nan"), dtype=dtype))
    one_by_one, off = torch.full_like(together, float("nan")), 0
    for parts, rows in items:
        n = row_count(rows, parts[0].shape[3])
        codec.decode_into(parts, one_by_one[:, :, :, off:off + n], rows)
        off += n
    assert torch.equal(together[:, :, :, :total], one_by_one[:, :, :, :total])
    assert together[:, :, :, total:].isnan().all()


def test_the_plain_format_takes_runs_and_scattered_rows():
    kv = random_kv(tokens=9)
    view = blobfmt.decode(bytes(blobfmt.encode(kv[:, 0], kv[:, 1], torch.zeros(9, dtype=torch.uint8))))
    assert view.header.codec is None
    assert_runs_are_the_same_rows(view, kv)
    rows = torch.tensor([8, 0, 4])
    assert torch.equal(view.take(rows), kv.index_select(3, rows))


def test_the_settings_offer_exactly_the_codecs():
    import typing

    from videokv.settings import Settings
    assert typing.get_args(Settings.model_fields["kv_codec"].annotation) == NAMES


def test_bytes_per_codec_against_bf16():
    kv = random_kv(tokens=128)
    bf16 = len(blobfmt.encode(kv[:, 0].bfloat16(), kv[:, 1].bfloat16(), torch.zeros(128, dtype=torch.uint8)))
    sizes = {n: len(blobfmt.encode(kv[:, 0], kv[:, 1], torch.zeros(128, dtype=torch.uint8), codec=codec_named(n)))
             for n in CODEC_NAMES}
    assert sizes["bf16"] == bf16 and sizes["fp16"] == bf16
    assert sizes["int8"] <= 0.55 * bf16 and sizes["fp8"] <= 0.55 * bf16 and sizes["int4"] <= 0.30 * bf16, sizes


def test_a_blob_names_its_codec_and_never_reads_as_another():
    kv = random_kv()
    buf = blobfmt.encode(kv[:, 0], kv[:, 1], torch.zeros(37, dtype=torch.uint8), codec=codec_named("int8"))
    assert blobfmt.read_header(buf).codec == codec_named("int8")
    bad = bytearray(buf)
    bad[28] = codec_named("fp8").code                  # as many bytes as int8: the checksum disagrees
    with pytest.raises(CorruptBlobError, match="checksum"):
        blobfmt.decode(bad)
    bad[28] = codec_named("int4").code                 # fewer bytes: the size disagrees first
    with pytest.raises(CorruptBlobError, match="size mismatch"):
        blobfmt.decode(bad)
    bad[28] = 99
    with pytest.raises(CorruptBlobError, match="codec code 99"):
        blobfmt.decode(bad)
    # The fingerprint names the codec; "none" keeps the fingerprint stores had before codecs.
    prints = {n: EngineConfig(kv_codec=n).fingerprint() for n in NAMES}
    assert len(set(prints.values())) == len(NAMES)
    import hashlib
    import json
    from dataclasses import asdict
    old = asdict(EngineConfig())
    del old["kv_codec"]
    assert prints["none"] == hashlib.sha256(json.dumps(old, sort_keys=True, separators=(",", ":")).encode()
                                            ).hexdigest()[:16]


@pytest.mark.parametrize("name", ["int8", "fp8"])
def test_a_corrupted_scale_is_a_checksum_error(name):
    kv = random_kv()
    codec = codec_named(name)
    buf = blobfmt.encode(kv[:, 0], kv[:, 1], torch.zeros(37, dtype=torch.uint8), codec=codec)
    hdr = blobfmt.read_header(buf)
    (_, _, scale_at) = blobfmt._payload_layout(codec, hdr.shape)[0][1]     # the key scales
    bad = bytearray(buf)
    bad[hdr.data_offset + scale_at + 3] ^= 0x10
    with pytest.raises(CorruptBlobError, match="checksum"):
        blobfmt.decode(bad)
    assert torch.equal(blobfmt.decode(bad, verify=False).take().isfinite(), torch.ones_like(kv, dtype=torch.bool))


def test_an_int8_store_is_smaller_and_answers_as_the_plain_one(tmp_path, ingested, toy_video, embedded_backend):
    from tests.conftest import make_runtime
    rt, got = ingested                                 # the default: int8
    assert rt.settings.kv_codec == "int8" and rt.config.kv_codec == "int8"
    plain = make_runtime(tmp_path / "plain", top_k=1, kv_codec="none")
    plain.backend = embedded_backend
    res = plain.pipeline.ingest(toy_video[0])
    assert rt.config.fingerprint() != plain.config.fingerprint()

    def stored(runtime, vid):             # the prompt prefix, then every chunk at L and H
        with runtime.store.reader() as r:
            rec = r.video(vid)
            return r.blob(vid, -1, "full").nbytes + sum(r.blob(vid, i, lvl).nbytes for i in range(rec.chunks_total)
                                                        for lvl in ("L", "H"))
    ratio = stored(rt, got.video_id) / stored(plain, res.video_id)
    assert ratio <= 0.30, ratio                      # float32 -> int8: about a quarter, with its scales
    for q in ("What color was the first card?", "What shape appeared last?"):
        a, b = plain.queries.ask(res.video_id, q, max_new_tokens=8), rt.queries.ask(got.video_id, q, max_new_tokens=8)
        assert a.answer == b.answer and a.finish_reason and b.answer_tokens == a.answer_tokens
        assert b.kv_bytes_read < a.kv_bytes_read
