import json
import subprocess
import sys

import pytest

from course_lib import bench
from course_lib.measure import LatencyStats
from course_lib.runtime import setup


def _stats(ms):
    return LatencyStats(ms, ms * 0.9, ms * 1.1, (ms,))


def test_row_derives_compression_and_speedup():
    rt = setup(device="cpu")
    row = bench.make_row(rt, "quantization", "course_cnn", "int8", 64, "accuracy", 0.93, 0.94, 250, 1000,
                         _stats(5.0), _stats(20.0))
    assert row.compression == 4.0 and row.speedup == 4.0
    assert row.latency_p10_ms == 4.5 and row.latency_p90_ms == 5.5
    assert row.threads == 2 and row.device == "cpu" and row.cpu_capability == rt.cpu_capability
    table = bench.format_table([row])
    assert "course_cnn" in table and "4.00" in table


@pytest.mark.parametrize("args,message", [
    (["nonsense"], "unknown topic 'nonsense'"),
    (["baseline", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_arguments_exit_with_status_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_without_gpu_exits_with_status_2(capsys, monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["baseline", "--device", "cuda"])
    assert exit_info.value.code == 2 and "no CUDA GPU" in capsys.readouterr().err


def test_baseline_cli_prints_only_json_rows():
    """The real command: one row per model and batch size, accuracies of the reference checkpoints."""
    result = subprocess.run([sys.executable, "-m", "course_lib.bench", "baseline", "--json"],
                            capture_output=True, text=True, check=True)
    rows = json.loads(result.stdout)
    assert [(r["model"], r["batch_size"]) for r in rows] == [
        (m, b) for m in ("lenet_300_100", "lenet5", "course_cnn", "minilm") for b in (1, 64)]
    fields = {"topic", "model", "variant", "device", "batch_size", "threads", "metric_name", "metric",
              "baseline_metric", "size_bytes", "baseline_size_bytes", "compression", "latency_ms",
              "baseline_latency_ms", "speedup", "cpu_capability"}
    minimum = {"lenet_300_100": 0.89, "lenet5": 0.90, "course_cnn": 0.93, "minilm": 0.65}
    for row in rows:
        assert fields <= set(row)
        assert row["topic"] == "baseline" and row["variant"] == "fp32" and row["device"] == "cpu"
        assert row["metric"] >= minimum[row["model"]]
        assert row["latency_ms"] > 0 and row["latency_p10_ms"] <= row["latency_ms"] <= row["latency_p90_ms"]
        assert row["compression"] == 1.0
    sizes = {r["model"]: r["size_bytes"] for r in rows}
    assert 4 * 266_610 < sizes["lenet_300_100"] < 4 * 266_610 + 2048
    assert 4 * 22_565_376 < sizes["minilm"] < 4 * 22_565_376 + 65536
    assert {r["metric_name"] for r in rows if r["model"] == "minilm"} == {"lee_pearson_r"}


def test_dataflow_cli_rows():
    result = subprocess.run([sys.executable, "-m", "course_lib.bench", "dataflow", "--json"],
                            capture_output=True, text=True, check=True)
    rows = json.loads(result.stdout)
    machine = {r["variant"]: r for r in rows if r["model"] == "machine"}
    for roof in ("fp32-matmul-peak", "fp32-conv-peak"):
        assert machine[roof]["metric_name"] == "gflops" and machine[roof]["metric"] > 1
    assert 0 < machine["layer-call-overhead"]["metric"] < 10_000
    assert machine["memory-bandwidth"]["metric_name"] == "gbytes_per_s" and machine["memory-bandwidth"]["metric"] > 0.5
    models = [(r["model"], r["variant"], r["batch_size"]) for r in rows if r["model"] != "machine"]
    assert models == [(m, "fp32", b) for m in ("course_cnn", "minilm") for b in (1, 8, 64)]
    latency = {(r["model"], r["batch_size"]): r["latency_ms"] for r in rows if r["model"] != "machine"}
    assert latency[("minilm", 64)] > latency[("minilm", 1)]


def test_quantization_cli_rows():
    """The real command: files written and reloaded, quality measured from them; timings are reported, not judged."""
    result = subprocess.run([sys.executable, "-m", "course_lib.bench", "quantization", "--json"],
                            capture_output=True, text=True, check=True)
    rows = json.loads(result.stdout)
    keys = [(r["model"], r["variant"], r["batch_size"]) for r in rows]
    assert keys == [("course_cnn", v, b) for b in (64, 1) for v in ("fp32", "fp32-compiled", "int8-static")] + [
        ("lenet5", "int8-static", 64), ("minilm", "int8-dynamic", 32)]
    by_key = dict(zip(keys, rows, strict=True))
    cnn = by_key[("course_cnn", "int8-static", 64)]
    assert abs(cnn["metric"] - cnn["baseline_metric"]) <= 0.005 and cnn["size_bytes"] <= 0.30 * cnn["baseline_size_bytes"]
    assert by_key[("lenet5", "int8-static", 64)]["compression"] > 3.3
    minilm = by_key[("minilm", "int8-dynamic", 32)]
    assert minilm["metric_name"] == "cosine_to_fp32" and minilm["metric"] >= 0.99 and minilm["baseline_metric"] == 1.0
    assert minilm["compression"] > 3.5, "int8 linear layers and int8 embedding tables"
    assert all(r["cpu_capability"] and r["latency_ms"] > 0 for r in rows)


def test_pruning_cli_rows():
    """Real retraining and fine-tuning (about 3 minutes): accuracies and file sizes are checked, timings reported."""
    result = subprocess.run([sys.executable, "-m", "course_lib.bench", "pruning", "--json"],
                            capture_output=True, text=True, check=True)
    lenet, cnn = json.loads(result.stdout)
    assert (lenet["model"], lenet["variant"]) == ("lenet_300_100", "magnitude-retrained")
    assert lenet["kept_fraction"] <= 0.10 + 1e-4 and lenet["metric"] >= lenet["baseline_metric"] - 0.01
    assert lenet["compression"] > 5, "a sparse file (bitmask or CSR) of 10% of the weights"
    assert (cnn["model"], cnn["variant"], cnn["batch_size"]) == ("course_cnn", "filter-pruned", 64)
    assert cnn["metric"] >= cnn["baseline_metric"] - 0.01 and cnn["kept_fraction"] < 0.5
    assert abs(cnn["compression"] * cnn["kept_fraction"] - 1) < 0.05, "the file shrinks with the parameters"


def test_distillation_rows_pair_alone_and_distilled_students(tmp_path):
    """The real code with short training (the full recipe's figures come from the CLI): schema, seeds, sizes."""
    from course_lib.bench import distillation
    from course_lib.runtime import setup

    rows = distillation(setup(), epochs=1, steps_per_epoch=20)
    assert [(r.model, r.variant, r.batch_size) for r in rows] == [
        ("student_cnn", "alone", 64), ("student_cnn", "distilled", 64),
        ("minilm", "truncated-student", 32), ("minilm", "distilled-student", 32)]
    truncated, distilled = rows[2:]
    assert distilled.metric > truncated.metric + 0.2, "distillation raises the cosine to the teacher"
    assert distilled.pearson_lee > truncated.pearson_lee and distilled.baseline_pearson_lee == pytest.approx(0.656, abs=0.002)
    assert distilled.compression > 1.3 and distilled.metric_name == "cosine_to_fp32"
    for row in rows[:2]:
        assert row.seeds == 3 and row.metric_std is not None and 0.1 < row.metric < 1
        assert len(row.seed_metrics) == 3 and row.metric == pytest.approx(sum(row.seed_metrics) / 3, abs=1e-4)
        assert row.compression > 10, "the student's file is over 10x smaller than the teacher's"
        assert row.baseline_metric == pytest.approx(0.942, abs=1e-4) and row.latency_ms > 0


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")  # torch.compile's first import
def test_decomposition_rows_from_written_and_reloaded_files():
    """The real code with short fine-tuning (the full recipe's figures come from the CLI): schema and sizes."""
    from course_lib.bench import decomposition
    from course_lib.runtime import setup

    rows = decomposition(setup(), steps_per_epoch=20)
    keys = [(r.model, r.variant, r.batch_size) for r in rows]
    assert keys[:3] == [("course_cnn", "tucker2", 64), ("course_cnn", "tucker2-eager", 64),
                        ("lenet_300_100", "svd", 64)]
    cnn, _, lenet = rows[:3]
    assert cnn.compression > 2 and cnn.metric > 0.85 and cnn.baseline_metric == pytest.approx(0.942, abs=1e-4)
    assert lenet.kept_fraction <= 0.25 and lenet.compression > 3.5 and lenet.metric > 0.85
    minilm = rows[3:]
    assert minilm and all(r.model == "minilm" and r.metric_name == "cosine_to_fp32" and r.rank for r in minilm)
    by_rank = {}
    for r in minilm:
        by_rank.setdefault(r.rank, {})[r.variant] = r
    compared = by_rank[256]  # both methods at the rank that still saves weights
    assert compared["ffn-asvd"].metric > compared["ffn-svd"].metric + 0.05, "whitening wins at equal rank"
    assert compared["ffn-asvd"].size_bytes == compared["ffn-svd"].size_bytes and compared["ffn-svd"].compression > 1
    assert all(r.metric >= 0.99 for r in minilm if r.rank != 256), "the other rows are where each reaches 0.99"


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
def test_memory_rows_measure_training_and_inference_peaks():
    """The real code (MiniLM's long sequences left to the CLI): schema, the checkpointed steps' gradients, the
    depthwise-separable CNN from its written and reloaded file."""
    from course_lib.bench import memory
    from course_lib.runtime import setup

    rows = memory(setup(), with_minilm=False)
    keys = [(r.model, r.variant) for r in rows]
    assert keys == [("course_cnn", "train-checkpointed"), ("course_cnn", "train-checkpointed-bf16"),
                    ("deep_mlp", "train-checkpointed-sqrt"), ("course_cnn_ds", "depthwise-separable"),
                    ("course_cnn_ds", "depthwise-separable-eager")]
    checkpointed, mixed, deep, ds, _ = rows
    assert checkpointed.metric < 1e-5 and checkpointed.metric_name == "gradient_relative_error"
    assert 1e-5 < mixed.metric < 0.3, "bfloat16 changes the gradients (8 bits of mantissa), not the training (sweep)"
    for row in (checkpointed, mixed, deep):
        assert row.peak_memory_bytes < row.baseline_peak_memory_bytes and row.batch_size >= 64
    assert mixed.peak_memory_bytes < checkpointed.peak_memory_bytes
    assert deep.baseline_peak_memory_bytes >= 2 * deep.peak_memory_bytes
    assert ds.baseline_parameters >= 5 * ds.parameters and ds.baseline_macs > 3 * ds.macs
    assert ds.metric > ds.baseline_metric - 0.015 and ds.compression > 5


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
def test_pipeline_rows_cover_the_course_cnn_runtimes_and_the_fraud_scorers():
    rows = bench.pipeline(setup())
    keys = [(r.model, r.variant, r.batch_size) for r in rows]
    assert keys == [("course_cnn", "pipeline", 64), ("course_cnn", "pt2e-int8", 64),
                    ("course_cnn", "onnxruntime-int8", 64), ("course_cnn", "pipeline", 1), ("course_cnn", "pt2e-int8", 1),
                    ("course_cnn", "onnxruntime-int8", 1), ("course_cnn", "pt2e-int8-aoti", 1),
                    ("fraud_mlp", "fp32", 1), ("fraud_mlp", "compressed", 1)]
    pipeline_row = rows[0]
    assert pipeline_row.compression >= 10 and pipeline_row.metric > pipeline_row.baseline_metric - 0.015
    assert all(r.fp32_compiled_latency_ms > 0 for r in rows[:7])
    for r in rows[1:6]:
        assert r.metric > r.baseline_metric - 0.015 and r.compression > 3.5
    aoti, pt2e = rows[6], rows[4]
    assert aoti.metric == pytest.approx(pt2e.metric, abs=0.002)  # the same int8 graph, compiled ahead of time
    fp32, compressed = rows[7:]
    assert fp32.metric_name == compressed.metric_name == "pr_auc" and fp32.p99_budget_ms == 10.0
    assert compressed.compression >= 4 and compressed.metric > fp32.metric - 0.02
    assert compressed.baseline_max_rate_at_p99 == fp32.max_rate_at_p99 > 0
    assert 0 < compressed.recall_at_fpr <= 1 and compressed.runtime
