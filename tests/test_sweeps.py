"""The cached sweep results are honest: entries re-measured now match, and every configuration is present."""

import pytest

from course_lib import sweeps
from course_lib.quantize import CALIBRATIONS


@pytest.mark.parametrize("name", sorted(sweeps.SWEEPS))
def test_sweeps_measure_the_validation_split_not_the_test_set(name):
    assert sweeps.load_results(name)["dataset"] == sweeps.SWEEP_DATASET


def test_quantization_cache_covers_every_configuration():
    results = sweeps.load_results("quantization")
    expected = {sweeps.weight_quantization_key(b, g, m) for b in sweeps.WEIGHT_BITS for g in sweeps.GRANULARITIES
                for m in CALIBRATIONS}
    assert set(results["accuracy"]) == expected and len(expected) == 44
    assert results["accuracy"]["8-bit/channel/minmax"] > results["baseline_accuracy"] - 0.002
    assert results["accuracy"]["1-bit/tensor/mean-abs"] < 0.5


@pytest.mark.parametrize("bits,granularity,method", [(3, "tensor", "mse"), (5, "channel", "percentile")])
def test_cached_accuracy_matches_a_fresh_measurement(bits, granularity, method):
    cached = sweeps.load_results("quantization")["accuracy"][sweeps.weight_quantization_key(bits, granularity, method)]
    measured = sweeps.weight_quantization_accuracy("course_cnn", bits, granularity, method)
    assert abs(measured - cached) < 0.002, "regenerate with: python -m course_lib.sweeps quantization"


def test_missing_or_unknown_results_say_how_to_get_them(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown sweep 'nope'"):
        sweeps.load_results("nope")
    monkeypatch.setattr(sweeps, "RESULTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m course_lib.sweeps quantization"):
        sweeps.load_results("quantization")


def test_pruning_cache_is_complete_and_tells_the_lessons():
    results = sweeps.load_results("pruning")
    lenet, cnn = results["lenet_300_100"], results["course_cnn"]
    n = len(lenet["sparsities"])
    assert all(len(curve) == n for curve in lenet["curves"].values())
    assert set(lenet["sensitivity"]) == {"fc1", "fc2", "fc3"}
    i = lenet["sparsities"].index(0.9)
    assert lenet["curves"]["global/retrained"][i] > lenet["curves"]["global/pruned"][i] + 0.2, "retraining recovers"
    eighty = lenet["sparsities"].index(0.8)
    assert lenet["curves"]["global/retrained"][eighty] > lenet["baseline_accuracy"] - 0.015, "80%: about a point"
    assert lenet["curves"]["global/pruned"][i] > lenet["curves"]["layer/pruned"][i], "global beats layer-wise"
    for scope in ("global", "layer"):  # masks remove exactly the requested share (ties at the threshold included)
        assert lenet["curves"][f"{scope}/reached"] == pytest.approx(lenet["sparsities"], abs=1e-5)
    assert set(lenet["obd"]["accuracy"]) == {f"{m}/{s}" for m in ("magnitude", "obd", "obd-hutchinson")
                                             for s in ("pruned", "retrained")}
    obd = lenet["obd"]["accuracy"]
    assert all(o > m for o, m in zip(obd["obd/pruned"], obd["magnitude/pruned"])), "the exact diagonal beats magnitude"
    assert obd["obd-hutchinson/pruned"][0] < obd["magnitude/pruned"][0] - 0.01, "a noisy estimate loses at 50%"
    lottery = lenet["lottery"]
    for kind in ("ticket", "random_init", "random_mask"):
        assert [len(runs) for runs in lottery[kind]] == [len(lottery["seeds"])] * len(lottery["kept"]), kind
    mean = {kind: [sum(runs) / len(runs) for runs in lottery[kind]] for kind in ("ticket", "random_mask")}
    assert all(t > r for t, r in zip(mean["ticket"], mean["random_mask"])), "the mask carries the most"
    assert all(len(cnn["granularity_sweep"][g]) == len(cnn["sparsities"]) for g in ("connection", "vector",
                                                                                    "kernel", "filter"))
    assert set(cnn["table"]["accuracy"]) == {"connection", "vector", "kernel", "filter", "layer"}


def test_cached_pruning_entries_match_fresh_measurements():
    import copy

    from course_lib import prune as P
    from course_lib.models import load_reference

    results = sweeps.load_results("pruning")
    lenet = load_reference("lenet_300_100")
    i = results["lenet_300_100"]["sparsities"].index(0.8)
    for scope in ("global", "layer"):
        pruned = P.apply_masks(copy.deepcopy(lenet), P.magnitude_masks(lenet, 0.8, scope))
        assert abs(sweeps.val_accuracy(pruned) - results["lenet_300_100"]["curves"][f"{scope}/pruned"][i]) < 0.002
    cnn, cached = load_reference("course_cnn"), results["course_cnn"]
    j = cached["sparsities"].index(0.4)
    kernel = P.apply_masks(copy.deepcopy(cnn), P.structured_masks(cnn, 0.4, "kernel", cached["layers"]))
    assert abs(sweeps.val_accuracy(kernel) - cached["granularity_sweep"]["kernel"][j]) < 0.002, \
        "regenerate with: python -m course_lib.sweeps pruning"


def test_sharing_cache_is_complete_and_tells_the_lessons():
    results = sweeps.load_results("sharing")
    lenet, lenet5 = results["lenet_300_100"], results["lenet5"]
    assert set(lenet["clusters_per_layer"]) == {f"{n}/{k}" for n in ("fc1", "fc2", "fc3")
                                                for k in sweeps.WIDGET_CLUSTERS}
    assert set(lenet["codebooks"]) == set(lenet["clusters_per_layer"])
    assert all(len(lenet["codebooks"][key]) == int(key.split("/")[1]) for key in lenet["codebooks"])
    assert set(lenet["inits"]) == {f"{i}/{k}" for i in ("linear", "random", "density") for k in sweeps.INIT_CLUSTERS}
    table = lenet5["bits_per_layer"]
    assert set(table) == {f"{layer}/{b}" for layer in sweeps.LENET5_LAYERS for b in sweeps.SHARING_BITS}
    for layer in sweeps.LENET5_LAYERS:
        assert table[f"{layer}/1"]["fine_tuned"] > table[f"{layer}/1"]["shared"], "fine-tuning lifts the low end"
        assert table[f"{layer}/8"]["shared"] > lenet5["baseline_accuracy"] - 0.003, "8 bits are nearly lossless"
    for name, stages in results["deep_compression"].items():
        assert [s["stage"] for s in stages] == ["fp32", "pruned", "pruned-shared", "deep-compression"]
        sizes = [s["size_bytes"] for s in stages]
        assert sizes == sorted(sizes, reverse=True)
        assert stages[2]["test_accuracy"] == stages[3]["test_accuracy"], "Huffman coding is lossless"
        assert stages[2]["val_accuracy"] == stages[3]["val_accuracy"]


@pytest.mark.parametrize("model_name,clusters,key", [("lenet_300_100", {"fc2": 4}, "fc2/4")])
def test_cached_sharing_entries_match_fresh_measurements(model_name, clusters, key):
    cached = sweeps.load_results("sharing")["lenet_300_100"]
    assert abs(sweeps.shared_accuracy(model_name, clusters) - cached["clusters_per_layer"][key]) < 1e-4, \
        "regenerate with: python -m course_lib.sweeps sharing"
    from course_lib.models import load_reference

    layer, k = key.split("/")
    fresh = sweeps.layer_codebook(load_reference(model_name), layer, int(k))
    assert fresh == pytest.approx(cached["codebooks"][key], abs=1e-6), "the widget's cached codebooks are honest"


def test_distillation_cache_is_complete_and_tells_the_lessons():
    results = sweeps.load_results("distillation")
    expected = {sweeps.distillation_key(t, a) for t in sweeps.DISTILL_TEMPERATURES for a in sweeps.DISTILL_ALPHAS}
    assert set(results["grid"]) == expected
    chosen = results["chosen"]
    assert results["grid"][sweeps.distillation_key(chosen["temperature"], chosen["alpha"])] == max(results["grid"].values())
    seeds = results["seeds"]
    assert set(seeds["alone"]) == set(seeds["distilled"]) == {str(s) for s in sweeps.DISTILL_SEEDS}
    assert all(seeds["distilled"][s] > seeds["alone"][s] for s in seeds["alone"]), "distilled wins on every seed"
    omitted = results["omitted_class"]
    assert omitted["alone"]["class_accuracy"] < 0.05, "a class never seen is never predicted"
    assert omitted["distilled"]["class_accuracy_corrected"] > omitted["alone"]["class_accuracy_corrected"]


def test_cached_distillation_entry_matches_a_fresh_run():
    """One student (about a minute): the grid's chosen entry, retrained now."""
    from course_lib import distill as KD
    from course_lib.data import load_fashion_mnist
    from course_lib.models import StudentCNN, load_reference

    results = sweeps.load_results("distillation")
    chosen = results["chosen"]
    logits = KD.teacher_logits(load_reference("course_cnn"), load_fashion_mnist("train").images)
    student = KD.train_student(StudentCNN, logits, KD.cached_distillation_loss(chosen["temperature"], chosen["alpha"]))
    cached = results["grid"][sweeps.distillation_key(chosen["temperature"], chosen["alpha"])]
    assert abs(sweeps.val_accuracy(student) - cached) < 0.005, "regenerate with: python -m course_lib.sweeps distillation"


def test_decomposition_cache_is_complete_and_tells_the_lessons():
    results = sweeps.load_results("decomposition")
    cnn = results["course_cnn"]
    assert set(cnn["sensitivity"]) == set(sweeps.DECOMPOSED_CONVS) == set(cnn["layer_ms"])
    assert all(len(v) == len(sweeps.RANK_FRACTIONS) for v in cnn["sensitivity"].values())
    assert all(v[-1] > cnn["baseline_accuracy"] - 0.002 for v in cnn["sensitivity"].values()), "full rank is exact"
    assert set(cnn["selection"]) >= {"uniform", "sensitivity", "cp"} and len(cnn["selection"]) == 4
    chosen = cnn["selection"][cnn["chosen"]]
    assert chosen["recovery"][-1] > cnn["baseline_accuracy"] - 0.01, "fine-tuned to within a point (validation)"
    assert cnn["macs"] / chosen["macs"] >= 2 and cnn["parameters"] / chosen["parameters"] >= 2
    assert [t["fraction"] for t in cnn["tradeoff"]] == list(sweeps.TRADEOFF_FRACTIONS)
    lenet = results["lenet_300_100"]
    assert results["lenet_300_100"]["parameters"] / lenet["grid"][lenet["chosen"]]["parameters"] >= 4
    assert lenet["chosen"] == sweeps.lenet_svd_key(*lenet["chosen_ranks"])
    minilm = results["minilm"]
    assert minilm["ranks"] == list(sweeps.MINILM_FFN_RANKS)
    assert minilm["cosine"]["svd"][-1] == pytest.approx(1.0, abs=1e-4), "full rank reproduces the model"
    below_full = range(len(minilm["ranks"]) - 1)
    assert all(minilm["cosine"]["asvd"][i] > minilm["cosine"]["svd"][i] for i in below_full), "whitening helps"


def test_cached_decomposition_entries_match_a_fresh_measurement():
    from course_lib import decompose as D
    from course_lib.models import load_reference

    cnn_results = sweeps.load_results("decomposition")["course_cnn"]
    cnn = load_reference("course_cnn")
    layer, i = "features.10", sweeps.RANK_FRACTIONS.index(0.25)
    fresh = sweeps.val_accuracy(D.decompose(cnn, D.uniform_plan(cnn, 0.25, [layer])))
    assert abs(fresh - cnn_results["sensitivity"][layer][i]) < 0.002, "regenerate: python -m course_lib.sweeps decomposition"
    plan = D.plan_from_json(cnn_results["selection"][cnn_results["chosen"]]["plan"])
    assert abs(sweeps.val_accuracy(D.decompose(cnn, plan)) - cnn_results["selection"][cnn_results["chosen"]]["before"]) < 0.002


def test_memory_cache_is_complete_and_tells_the_lessons():
    results = sweeps.load_results("memory")
    grid = results["checkpointing"]
    assert len(grid["grid"]) == len(sweeps.MEMORY_BATCH_SIZES) * len(sweeps.MEMORY_SEGMENTS) * len(sweeps.MEMORY_DTYPES)
    for batch in sweeps.MEMORY_BATCH_SIZES:
        plain = grid["grid"][sweeps.memory_key(batch, 1, "float32")]
        assert all(grid["grid"][sweeps.memory_key(batch, k, "float32")]["peak"] < plain["peak"]
                   for k in sweeps.MEMORY_SEGMENTS[1:]), "every checkpointed step needs less memory"
        assert grid["grid"][sweeps.memory_key(batch, 1, "bfloat16")]["peak"] < plain["peak"]
    deep = results["deep_mlp"]["segments"]
    sqrt_k = str(round(sweeps.DEEP_MLP_DEPTH ** 0.5))
    assert deep["1"]["peak"] / deep[sqrt_k]["peak"] >= 2, "Chen's sqrt(n) schedule halves the deep MLP's memory"
    best = min(v["peak"] for v in deep.values())
    assert deep[str(sweeps.DEEP_MLP_DEPTH)]["peak"] > 1.2 * best, "one segment per layer keeps every input again"
    sharing = results["sharing"]
    assert sharing["tied"]["tied"]["parameters"] == sharing["tied"]["one block"]["parameters"]
    assert sharing["tied"]["untied"]["parameters"] > 2 * sharing["tied"]["tied"]["parameters"]
    hashed = sharing["hashed"]
    assert [e["compression"] for e in hashed.values()] == list(sweeps.HASHED_COMPRESSIONS)
    assert all(abs(e["dense_parameters"] - e["parameters"]) <= 0.05 * e["parameters"] for e in hashed.values())
    attention = results["attention"]["lengths"]
    assert [int(n) for n in attention] == list(sweeps.ATTENTION_LENGTHS)
    assert all(e["max_difference"] < 1e-5 for e in attention.values()), "fused and explicit attention agree"
    assert attention["2048"]["explicit_peak"] >= 4 * attention["2048"]["sdpa_peak"]
    assert set(results["bf16"]["runs"]) == set(sweeps.MEMORY_DTYPES)


def test_cached_memory_entries_match_a_fresh_measurement():
    from course_lib import memory as M
    from course_lib.models import load_reference

    grid = sweeps.load_results("memory")["checkpointing"]
    images, labels = sweeps._training_batch(32)
    cnn = load_reference("course_cnn")
    for segments, dtype in ((1, "float32"), (4, "bfloat16")):
        entry = grid["grid"][sweeps.memory_key(32, segments, dtype)]
        example = images if entry["balance"] == "bytes" else None
        assert M.with_checkpointing(cnn, segments, example).features.starts == entry["starts"]
        model = M.checkpoint_at(cnn, entry["starts"])
        fresh = M.training_step_memory(model, sweeps.MEMORY_OPTIMIZER, images, labels, dtype).peak
        assert abs(fresh - entry["peak"]) <= 0.02 * entry["peak"], "regenerate: python -m course_lib.sweeps memory"
    hashed = sweeps.load_results("memory")["sharing"]["hashed"]
    assert sweeps.dense_mlp_with(hashed[f"{1 / 64:.6f}"]["parameters"]).fc1.out_features == \
        hashed[f"{1 / 64:.6f}"]["dense_hidden"][0]
