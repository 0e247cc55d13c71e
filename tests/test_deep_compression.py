"""The Deep Compression pipeline writes every stage's real file, and each is smaller than the one before."""

import dataclasses

import pytest
import torch

from course_lib import bench
from course_lib import deep_compression as D
from course_lib.models import build_model
from course_lib.runtime import setup
from course_lib.share import load_model
from course_lib.train import evaluate

QUICK = {name: dataclasses.replace(recipe, prune_epochs=1, pruning_epochs=1, codebook_epochs=1, steps_per_epoch=20)
         for name, recipe in D.RECIPES.items()}


def test_every_stage_is_a_smaller_real_file_evaluated_after_reloading(tmp_path):
    result = D.run("lenet_300_100", tmp_path, QUICK["lenet_300_100"])
    assert [s.name for s in result.stages] == list(D.STAGES)
    sizes = [s.size_bytes for s in result.stages]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    assert all(s.path.stat().st_size == s.size_bytes for s in result.stages)
    final = result.stage("deep-compression")
    assert final.accuracy == pytest.approx(evaluate(load_model(final.path, build_model("lenet_300_100"))))
    target = QUICK["lenet_300_100"].sparsity
    expected_kept = sum((1 - target[n]) * build_model("lenet_300_100").get_submodule(n).weight.numel()
                        for n in target) / sum(p.numel() for n, p in build_model("lenet_300_100").named_parameters()
                                               if n.endswith("weight"))
    assert final.kept_fraction == pytest.approx(expected_kept, abs=1e-3)
    assert result.stage("pruned-shared").accuracy == final.accuracy, "Huffman coding is lossless"
    decoded = load_model(final.path, build_model("lenet_300_100"))
    for name, bits in QUICK["lenet_300_100"].bits.items():
        assert len(torch.unique(decoded.get_submodule(name).weight)) <= 2 ** bits


def test_bench_sharing_rows_carry_the_stages_of_both_lenets(monkeypatch):
    monkeypatch.setattr(D, "RECIPES", QUICK)
    rows = bench.sharing(setup(device="cpu"))
    assert [(r.model, r.variant) for r in rows] == [(m, v) for m in ("lenet_300_100", "lenet5")
                                                    for v in ("pruned", "pruned-shared", "deep-compression")]
    for row in rows:
        assert row.topic == "sharing" and row.compression == round(row.baseline_size_bytes / row.size_bytes, 3)
        assert 0 < row.kept_fraction < 1 and row.latency_ms > 0
    assert {r.model: r.baseline_size_bytes for r in rows} == {"lenet_300_100": 1066896, "lenet5": 1724920}
