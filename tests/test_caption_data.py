"""Image-caption data for RO-ViT pretraining: CSV / JSONL lists, webdataset tar shards, unreadable
images, sharding over ranks and workers, and resuming at a batch offset."""

import csv
import io
import itertools
import json
import logging
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ovdet_plugin.pretraining.caption_data import (
    CaptionDataset,
    clip_image_transform,
    collate_captions,
    expand_shards,
    load_caption_list,
)

N = 12


def _png_bytes(i):
    arr = np.full((20 + i, 24, 3), i * 20 % 255, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def files(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(N):
        (tmp_path / "img" / f"{i}.png").write_bytes(_png_bytes(i))
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "caption"])
        w.writerows([(f"img/{i}.png", f"caption {i}") for i in range(N)])
    with open(tmp_path / "list.jsonl", "w") as f:
        for i in range(N):
            f.write(json.dumps({"image": str(tmp_path / "img" / f"{i}.png"), "text": f"cap {i}"}))
            f.write("\n")
    # 3 shards x 4 samples; captions as .txt, or .json in the last shard
    for s in range(3):
        with tarfile.open(tmp_path / f"shard-{s:03d}.tar", "w") as tar:
            for j in range(4):
                i = 4 * s + j
                members = {f"{i:05d}.png": _png_bytes(i)}
                if s < 2:
                    members[f"{i:05d}.txt"] = f"shard caption {i}".encode()
                else:
                    members[f"{i:05d}.json"] = json.dumps(
                        {"caption": f"shard caption {i}"}
                    ).encode()
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return tmp_path


def _captions(ds, workers=0):
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    return [s["caption"] for s in loader]


def _ds(**kw):
    kw.setdefault("transform", clip_image_transform(32))
    kw.setdefault("infinite", False)
    return CaptionDataset(**kw)


def test_csv_and_jsonl(files):
    csv_records = load_caption_list(str(files / "list.csv"))
    assert len(csv_records) == N and csv_records[3] == (str(files / "img" / "3.png"), "caption 3")
    jl = load_caption_list(str(files / "list.jsonl"))
    assert jl[5][1] == "cap 5"
    ds = _ds(records=csv_records, rank=0, world_size=1)
    samples = list(ds)
    assert len(samples) == N
    assert samples[0]["image"].shape == (3, 32, 32)
    assert sorted(s["caption"] for s in samples) == sorted(f"caption {i}" for i in range(N))
    batch = collate_captions(samples[:4])
    assert batch["images"].shape == (4, 3, 32, 32) and len(batch["captions"]) == 4


def test_bad_lists_raise(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no entries"):
        load_caption_list(str(tmp_path / "empty.jsonl"))
    (tmp_path / "x.csv").write_text("file,words\na.png,hello\n")
    with pytest.raises(ValueError, match="image path"):
        load_caption_list(str(tmp_path / "x.csv"))
    with pytest.raises(FileNotFoundError, match="CAPTION_FILES"):
        load_caption_list(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="empty"):
        _ds(records=[])


def test_tar_shards(files):
    shards = expand_shards(str(files / "shard-{000..002}.tar"))
    assert len(shards) == 3
    assert expand_shards(str(files / "shard-*.tar")) == shards
    with pytest.raises(FileNotFoundError, match="SHARDS"):
        expand_shards(str(files / "shard-{000..003}.tar"))
    caps = _captions(_ds(shards=shards, rank=0, world_size=1))
    assert sorted(caps) == sorted(f"shard caption {i}" for i in range(N))


def test_unreadable_image_skipped_counted_logged(files, caplog):
    (files / "img" / "5.png").write_bytes(b"\x89PNG broken")
    records = load_caption_list(str(files / "list.csv"))
    ds = _ds(records=records, rank=0, world_size=1, shuffle=False)
    with caplog.at_level(logging.WARNING):
        samples = list(ds)
    assert len(samples) == N - 1 and "caption 5" not in [s["caption"] for s in samples]
    assert ds.num_skipped == 1 and samples[-1]["num_skipped"] == 1
    assert any("5.png" in r.getMessage() and "Skipped" in r.getMessage() for r in caplog.records)
    # a shard sample without caption is skipped too
    with tarfile.open(files / "nocap.tar", "w") as tar:
        data = _png_bytes(1)
        info = tarfile.TarInfo("a.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    ds2 = _ds(shards=[str(files / "nocap.tar")], rank=0, world_size=1)
    assert list(ds2) == [] and ds2.num_skipped == 1


@pytest.mark.parametrize("source", ["list", "shards_by_shard", "shards_by_sample"])
def test_sharding_over_ranks_and_workers_is_disjoint_and_complete(files, source):
    if source == "list":
        kw = {"records": load_caption_list(str(files / "list.csv"))}
    elif source == "shards_by_shard":  # 3 shards, 1 rank x 3 workers: one shard each
        kw = {"shards": expand_shards(str(files / "shard-*.tar"))}
    else:  # 3 shards < 2 ranks x 2 workers: split by sample
        kw = {"shards": expand_shards(str(files / "shard-*.tar"))}
    world, workers = (1, 3) if source == "shards_by_shard" else (2, 2)
    parts = [_captions(_ds(rank=r, world_size=world, **kw), workers) for r in range(world)]
    flat = list(itertools.chain(*parts))
    assert len(flat) == len(set(flat)) == N  # disjoint and complete
    assert all(len(p) > 0 for p in parts)


def test_resume_at_batch_offset_matches_uninterrupted(files):
    records = load_caption_list(str(files / "list.csv"))

    def batches(start, n):
        ds = _ds(records=records, rank=1, world_size=2, infinite=True, seed=3)
        ds.set_start(start, 2)
        loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_captions)
        return [b["captions"] for b in itertools.islice(loader, n)]

    full = batches(0, 7)
    assert batches(3, 4) == full[3:]
    assert all(len(b) == 2 for b in full)
    torch.manual_seed(0)  # the loader is deterministic whatever the global RNG
    assert batches(5, 2) == full[5:]
