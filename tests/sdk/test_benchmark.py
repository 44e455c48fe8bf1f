"""The benchmark's arithmetic and structure: FLOPs of graphs counted by hand, the statistics on
known samples, and the JSON report's schema. Timings themselves are not tested (shared CPUs)."""
from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the benchmark's FLOP counter needs onnx ([dev] extra)")
from onnx import TensorProto, helper  # noqa: E402

from megaportraits.benchmark import flops, stats  # noqa: E402

F32 = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=20, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def _weights(name, shape, rng):
    return helper.make_tensor(name, F32, shape, rng.standard_normal(shape).astype(np.float32).ravel())


def _out(name="y"):
    return helper.make_tensor_value_info(name, F32, None)


# ---- FLOPs counted by hand ---------------------------------------------------------------------
def test_conv_flops_match_the_hand_count():
    # N=2, C_in=3 -> C_out=8, 3x3 kernel, stride 2, pad 1, 32x32 -> 16x16; bias present.
    rng = np.random.default_rng(0)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    model = _model([node], [helper.make_tensor_value_info("x", F32, ["batch", 3, 32, 32])], [_out()],
                   [_weights("w", [8, 3, 3, 3], rng), _weights("b", [8], rng)])
    cost = flops.count_graph(model, batch=2)
    outputs = 2 * 8 * 16 * 16
    assert cost.flops == 2 * outputs * (3 * 3 * 3) + outputs  # 2 FLOPs per MAC, 1 per bias add
    x_bytes, w_bytes, b_bytes, y_bytes = 4 * 2 * 3 * 32 * 32, 4 * 8 * 27, 4 * 8, 4 * outputs
    assert cost.bytes_moved == x_bytes + w_bytes + b_bytes + y_bytes


def test_grouped_conv_counts_only_the_channels_each_group_sees():
    rng = np.random.default_rng(1)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1], group=4)
    model = _model([node], [helper.make_tensor_value_info("x", F32, [1, 8, 5, 7])], [_out()],
                   [_weights("w", [12, 2, 1, 1], rng)])
    assert flops.count_graph(model).flops == 2 * (12 * 5 * 7) * 2


def test_matmul_flops_with_broadcast_batch():
    # (2, 3, 5, 7) @ (7, 11): 2*3*5*11 outputs, 7 MACs each.
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = _model([node], [helper.make_tensor_value_info("a", F32, ["batch", 3, 5, 7]),
                            helper.make_tensor_value_info("b", F32, [7, 11])], [_out()])
    assert flops.count_graph(model, batch=2).flops == 2 * (2 * 3 * 5 * 11) * 7


def test_gemm_flops_with_transposed_a_and_bias():
    # A is (K=6, M=4) with transA=1, B is (6, 9): 4x9 outputs, 6 MACs each, plus C.
    rng = np.random.default_rng(2)
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1)
    model = _model([node], [helper.make_tensor_value_info("a", F32, [6, 4])], [_out()],
                   [_weights("b", [6, 9], rng), _weights("c", [9], rng)])
    assert flops.count_graph(model).flops == 2 * 4 * 9 * 6 + 4 * 9


def test_grid_sample_flops_by_mode_and_rank():
    def cost(mode, x_shape, grid_shape, op=("", "GridSample")):
        node = helper.make_node(op[1], ["x", "g"], ["y"], domain=op[0], mode=mode)
        extra = [helper.make_opsetid(op[0], 1)] if op[0] else []
        model = _model([node], [helper.make_tensor_value_info("x", F32, x_shape),
                                helper.make_tensor_value_info("g", F32, grid_shape)], [_out()],
                       extra_opsets=extra)
        return flops.count_graph(model)

    # 2-D bilinear: 4 neighbours blended per output element and channel.
    assert cost("linear", [1, 5, 9, 9], [1, 4, 6, 2]).flops == 2 * 4 * (5 * 4 * 6)
    # 3-D trilinear: 8 neighbours.
    trilinear = cost("linear", [2, 96, 4, 8, 8], [2, 3, 5, 7, 3])
    assert trilinear.flops == 2 * 8 * (2 * 96 * 3 * 5 * 7)
    assert cost("nearest", [1, 5, 4, 8, 8], [1, 3, 5, 7, 3]).flops == 0
    # Our custom op is counted like the standard op it equals, under its own name.
    ours = cost("linear", [2, 96, 4, 8, 8], [2, 3, 5, 7, 3], op=flops.CUSTOM_GRID_SAMPLE)
    assert ours.flops == trilinear.flops and ours.bytes_moved == trilinear.bytes_moved
    assert list(ours.flops_by_op()) == ["GridSample3D"]


def test_custom_op_shapes_flow_into_later_nodes():
    # The op's output shape must reach the Relu after it, although onnx has no schema for it.
    nodes = [helper.make_node("GridSample3D", ["x", "g"], ["v"], domain="com.megaportraits", mode="linear"),
             helper.make_node("Relu", ["v"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch", 4, 2, 3, 3]),
                           helper.make_tensor_value_info("g", F32, ["batch", 5, 6, 7, 3])], [_out()],
                   extra_opsets=[helper.make_opsetid("com.megaportraits", 1)])
    cost = flops.count_graph(model, batch=3)
    voxels = 3 * 4 * 5 * 6 * 7
    assert cost.flops_by_op() == {"GridSample3D": 16 * voxels, "Relu": voxels}
    assert cost.uncounted == {}


def test_chain_of_shapes_and_unknown_ops_are_reported():
    # Reshape moves nothing; an op without a convention is listed, not silently zero.
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [4, 6])
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Sigmoid", ["r"], ["s"]),
             helper.make_node("Det", ["s"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", F32, [2, 3, 4])], [_out()], [shape])
    cost = flops.count_graph(model)
    assert cost.flops == 24
    assert cost.uncounted == {"Det": 1}
    assert cost.nodes[0].bytes_moved == 0


def test_symbolic_axes_other_than_batch_need_explicit_shapes():
    model = _model([helper.make_node("Relu", ["x"], ["y"])],
                   [helper.make_tensor_value_info("x", F32, ["batch", "n"])], [_out()])
    with pytest.raises(ValueError, match="input_shapes"):
        flops.count_graph(model)
    assert flops.count_graph(model, input_shapes={"x": (2, 5)}).flops == 10


def test_roofline_floor_takes_the_slower_bound_of_each_node():
    cost = flops.GraphCost(nodes=[flops.NodeCost("a", "Conv", flops=10_000, bytes_moved=100),
                                  flops.NodeCost("b", "Add", flops=10, bytes_moved=8_000)], batch=1)
    # peak 1000 FLOP/s, 100 B/s: node a is compute-bound (10 s), node b memory-bound (80 s).
    assert cost.floor_seconds(1000.0, 100.0) == pytest.approx(10.0 + 80.0)


# ---- statistics --------------------------------------------------------------------------------
def test_percentiles_interpolate_between_ranks_like_numpy():
    samples = [7.0, 1.0, 3.0, 10.0, 5.0]
    assert stats.percentile(samples, 50) == 5.0
    assert stats.percentile(samples, 90) == pytest.approx(7.0 + 0.6 * 3.0)
    rng = np.random.default_rng(3)
    random = rng.exponential(size=37)
    for q in (0, 13, 50, 90, 99, 100):
        assert stats.percentile(random, q) == pytest.approx(np.percentile(random, q))
    with pytest.raises(ValueError):
        stats.percentile([], 50)


def test_summarize_converts_seconds_to_milliseconds():
    timing = stats.summarize([0.004, 0.001, 0.002, 0.003], warmup=2)
    assert timing.median_ms == pytest.approx(2.5)
    assert timing.min_ms == pytest.approx(1.0)
    assert timing.mean_ms == pytest.approx(2.5)
    assert timing.p99_ms == pytest.approx(1.0 + 3.0 * 0.99 * 1.0)
    assert (timing.runs, timing.warmup) == (4, 2)


def test_measure_runs_warmup_then_the_timed_calls():
    calls = []
    timing = stats.measure(lambda: calls.append(1), warmup=3, runs=5)
    assert len(calls) == 8 and timing.runs == 5 and timing.warmup == 3
    assert timing.peak_rss_mb is None or timing.peak_rss_mb > 0


def test_measure_stops_at_the_time_budget_but_not_below_min_runs():
    calls = []
    timing = stats.measure(lambda: calls.append(1), warmup=0, runs=1000, max_seconds=0.0, min_runs=4)
    assert timing.runs == 4


# ---- the report --------------------------------------------------------------------------------
from megaportraits.benchmark import report as rp  # noqa: E402


def _result(stage, variant, median_ms, flops=None, floor_ms=None, peak=None):
    timing = stats.summarize([median_ms / 1e3 * f for f in (0.9, 1.0, 1.3)], warmup=1)
    return rp.StageResult(stage=stage, variant=variant, provider="cpu", threads=2, batch=1, timing=timing,
                          flops=flops, bytes_moved=None if flops is None else 10 * flops,
                          floor_ms=floor_ms, peak_gflops=peak)


def _report():
    results = [_result("per_frame", "ours", 20.0, flops=4_000_000_000, floor_ms=8.0, peak=400.0),
               _result("per_frame", "portable", 30.0, flops=4_000_000_000, floor_ms=8.0, peak=400.0),
               _result("per_frame", "torch", 50.0, flops=4_000_000_000, floor_ms=8.0, peak=400.0),
               _result("video_decode", "ours", 5.0)]
    return rp.Report(machine={"cpu_model": "test cpu", "usable_cores": 2, "load_average": [0.1, 0.1, 0.1]},
                     peaks=[{"threads": 2, "gemm_gflops": 400.0, "bandwidth_gbs": 20.0}],
                     bundle={"preset": "tiny", "path": "/nowhere"}, settings={"runs": 3},
                     results=results, notes=["a note"])


def test_derived_figures_follow_from_flops_time_and_peak():
    r = _report().results[0]
    assert r.gflops_per_s == pytest.approx(4.0 / 0.020)  # 200 GFLOP/s
    assert r.peak_fraction == pytest.approx(0.5)
    assert r.x_floor == pytest.approx(20.0 / 8.0)
    no_graph = _report().results[3]
    assert no_graph.gflops_per_s is None and no_graph.x_floor is None


def test_comparisons_give_alternative_over_ours():
    (row,) = _report().comparisons("per_frame")
    assert row["speedup_vs_portable"] == pytest.approx(1.5)
    assert row["speedup_vs_torch"] == pytest.approx(2.5)


def test_json_report_schema_round_trips(tmp_path):
    path = tmp_path / "report.json"
    _report().write_json(path)
    d = json.loads(path.read_text())
    rp.check_report_dict(d)
    assert d["schema"] == rp.SCHEMA
    assert set(d) == {"schema", "machine", "peaks", "bundle", "settings", "results", "comparisons", "notes",
                      "profiles"}
    first = d["results"][0]
    assert set(first["timing"]) == {"median_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms", "runs", "warmup",
                                    "peak_rss_mb"}
    assert first["gflops_per_s"] == pytest.approx(200.0)
    again = rp.report_from_dict(d)
    assert [r.key for r in again.results] == [r.key for r in _report().results]
    assert again.results[0].peak_fraction == pytest.approx(0.5)


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.pop("peaks"), "lacks peaks"),
    (lambda d: d.update(schema="other/9"), "schema"),
    (lambda d: d["results"][0].pop("flops"), r"results\[0\] lacks flops"),
    (lambda d: d["results"][1].update(stage="teleport"), "unknown stage"),
    (lambda d: d["results"][0]["timing"].update(p90_ms=0.0), "not ordered"),
])
def test_schema_check_names_what_is_wrong(damage, message):
    d = _report().to_dict()
    damage(d)
    with pytest.raises(ValueError, match=message):
        rp.check_report_dict(d)


def test_table_lists_every_result_and_the_ratios():
    text = rp.format_table(_report())
    assert text.count("\nper_frame    ") == 3 and "video_decode" in text
    assert "portable 30.00 ms (1.50x)" in text and "torch 50.00 ms (2.50x)" in text
    assert "note: a note" in text


def test_png_chart_is_written(tmp_path):
    pytest.importorskip("matplotlib", reason="the chart needs matplotlib ([dev] extra)")
    path = tmp_path / "chart.png"
    rp.write_png(_report(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- a whole run, on the SDK's toy bundle (tests/sdk/toy_bundle.py) ---------------------------
from megaportraits.benchmark.machine import MachinePeaks  # noqa: E402
from megaportraits.benchmark.runner import BenchmarkPlan, run_benchmark  # noqa: E402
from megaportraits.benchmark.stages import RunSettings  # noqa: E402

# The toy generator at batch 1 (see toy_bundle.generator_graph), counted by hand:
# ReduceMean over depth reads 3*2*8*8 = 384 elements, ReduceMean of the descriptor 3*4*4 = 48,
# MatMul (1 x 19) @ (19 x 3) = 2*3*19 = 114, then Sub, Mul, Add, Sigmoid on 3*32*32 each;
# Resize (nearest), Reshape, Concat, Unsqueeze: 0.
TOY_GENERATOR_FLOPS = 384 + 48 + 114 + 4 * 3 * 32 * 32
FAKE_PEAKS = MachinePeaks(threads=1, gemm_gflops=100.0, gemm_size=1, numpy_gemm_gflops=None,
                          bandwidth_gbs=10.0, copy_gbs=None, ort_stream_gbs=10.0)


def test_a_whole_run_has_every_stage_its_work_and_floor(toy_custom_bundle, tmp_path):
    stages = ("source", "driver", "generator", "per_frame", "warp", "paste_back")
    plan = BenchmarkPlan(bundle_dir=toy_custom_bundle, threads=(1,), batches=(1,), stages=stages,
                         settings=RunSettings(warmup=1, runs=2, max_seconds=0.2))
    report = run_benchmark(plan, log=lambda _: None, peaks={1: FAKE_PEAKS})
    got = {(r.stage, r.variant) for r in report.results}
    expected = {(s, v) for s in stages[:5] for v in ("ours", "portable")} | {("paste_back", "ours")}
    if any("ours not measured" in n for n in report.notes):  # no custom-op library built here
        expected = {k for k in expected if k[1] != "ours" or k[0] == "paste_back"}
    assert got == expected
    by_key = {(r.stage, r.variant): r for r in report.results}
    generator, driver, frame = (by_key[(s, "portable")] for s in ("generator", "driver", "per_frame"))
    assert generator.flops == TOY_GENERATOR_FLOPS
    assert frame.flops == generator.flops + driver.flops
    assert frame.peak_fraction == pytest.approx(frame.gflops_per_s / 100.0)
    cost = flops.count_graph(toy_custom_bundle / "generator.portable.onnx")
    assert generator.floor_ms == pytest.approx(1e3 * cost.floor_seconds(100e9, 10e9))
    warp = by_key[("warp", "portable")]
    assert warp.flops == 16 * 3 * 2 * 8 * 8  # trilinear: 8 MACs per output element of the 3x2x8x8 volume
    path = tmp_path / "run.json"
    report.write_json(path)
    rp.check_report_dict(json.loads(path.read_text()))


def test_the_sdk_command_line_runs_the_benchmark_as_json(toy_bundle, capsys, tmp_path):
    from megaportraits import cli

    ceilings = tmp_path / "earlier.json"
    ceilings.write_text(json.dumps({"peaks": [FAKE_PEAKS.to_dict()]}))
    code = cli.main(["benchmark", "--bundle", str(toy_bundle), "--stages", "driver,generator", "--threads", "1",
                     "--runs", "1", "--warmup", "0", "--max-seconds", "0.1", "--json", "--ceilings", str(ceilings)])
    assert code == 0
    d = json.loads(capsys.readouterr().out)
    rp.check_report_dict(d)
    # A portable-only bundle has no custom-op graphs: only the portable variant, and a note saying so.
    assert {r["variant"] for r in d["results"]} == {"portable"}
    assert any("portable-only" in n for n in d["notes"])
    assert d["peaks"] == [FAKE_PEAKS.to_dict()]


def test_the_command_line_refuses_unknown_stages_in_one_line(capsys):
    from megaportraits import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["benchmark", "--stages", "driver,teleport"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "unknown stage 'teleport'" in err and len(err.splitlines()) == 1


def test_image_side_stages_run_the_sdk_code_per_frame(toy_bundle):
    from megaportraits import manifest as mf
    from megaportraits.benchmark.io_stages import measure_io_stages

    notes = []
    stages = ["face_crop", "paste_back", "video_encode", "video_decode"]
    results = measure_io_stages(mf.load_manifest(toy_bundle), RunSettings(warmup=1, runs=3), stages, notes,
                                frame_size=(160, 120), video_frames=6)
    assert [r.stage for r in results] == stages
    assert [r.timing.runs for r in results] == [3, 3, 5, 5]  # video: every frame but the warm-up one
    assert all(r.flops is None and r.timing.min_ms > 0 for r in results)
    assert "32px output into a 160x120 photo" in results[1].note and notes


def test_profile_summary_sums_kernel_time_by_op_type():
    from megaportraits.benchmark.profile import summarize_profile

    def node(op, us, name="n"):
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": us, "args": {"op_name": op}}

    events = [node("Conv", 3000, "a"), node("FusedConv", 1000, "b"), node("Relu", 1000),
              {"cat": "Node", "name": "a_fence_before", "dur": 999, "args": {"op_name": "Conv"}},
              {"cat": "Session", "name": "model_run", "dur": 99999}]
    cost = flops.GraphCost(nodes=[flops.NodeCost("a", "Conv", 8_000_000_000, 0)], batch=1)
    conv, relu = summarize_profile(events, runs=2, cost=cost)
    assert (conv.op_type, conv.ms_per_run, conv.share) == ("Conv", 2.0, 0.8)
    assert conv.gflops_per_s == pytest.approx(8.0 / 2e-3)
    assert (relu.ms_per_run, relu.flops, relu.gflops_per_s) == (0.5, 0, None)


def test_profiling_a_real_session_finds_its_nodes(toy_bundle):
    from megaportraits import manifest as mf
    from megaportraits.benchmark.profile import profile_generator

    rows = profile_generator(toy_bundle, mf.load_manifest(toy_bundle), "portable", threads=1, runs=2)
    assert {"MatMul", "Sigmoid"} <= {r.op_type for r in rows}
    assert sum(r.share for r in rows) == pytest.approx(1.0)


def test_compositing_stages_are_measured_for_matte_bundles_only(toy_bundle):
    import dataclasses

    from megaportraits import manifest as mf
    from megaportraits.benchmark.io_stages import measure_io_stages

    plain = mf.load_manifest(toy_bundle)
    generator = plain.graphs["generator"]
    image = next(t for t in generator.outputs if t.name == "image")
    matte_output = dataclasses.replace(image, name="matte", shape=(image.shape[0], 1, *image.shape[2:]))
    with_matte = dataclasses.replace(plain, graphs={
        **plain.graphs, "generator": dataclasses.replace(generator, outputs=(*generator.outputs, matte_output))})
    stages = ["backdrop", "composite"]
    notes = []
    results = measure_io_stages(with_matte, RunSettings(warmup=1, runs=3), stages, notes, frame_size=(160, 120))
    assert [r.stage for r in results] == stages
    assert all(r.timing.runs == 3 and r.timing.min_ms > 0 for r in results)
    notes = []
    assert measure_io_stages(plain, RunSettings(warmup=1, runs=3), stages, notes, frame_size=(160, 120)) == []
    assert any("no matte" in n for n in notes)


# ---- the sessions the benchmark measures are the SDK's ----------------------------------------
def test_measured_sessions_are_made_like_the_sdks_own(toy_bundle):
    """The warp stage, the profiler and the machine ceilings use megaportraits.sessions: no
    spinning pools, the requested threads (the SDK turned spinning off; the benchmark used not to)."""
    from megaportraits.benchmark import stages as st
    from megaportraits.bundle import open_bundle

    volume = np.random.default_rng(0).standard_normal((1, 3, 2, 4, 4), dtype=np.float32)
    session = st.make_session(st.warp_model(volume.shape, (1, 2, 4, 4, 3), custom=False).SerializeToString(),
                              "cpu", 1, needs_custom_op=False)
    sdk = open_bundle(toy_bundle, provider="cpu", threads=1).sessions["driver"]
    for s in (session, sdk):
        options = s.get_session_options()
        assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# ---- benchmarks/bench_grid_sample.py: a thin script over this package -------------------------


def test_bench_grid_sample_reports_in_the_package_schema(capsys, monkeypatch, repo_script):
    bench = repo_script("benchmarks/bench_grid_sample.py")
    monkeypatch.setattr(bench, "measure_peaks", lambda threads: FAKE_PEAKS)
    assert bench.main(["--threads", "1", "--channels", "4", "--depth", "3", "--size", "5", "--repeats", "2",
                       "--warmup", "0", "--grid", "smooth", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    rp.check_report_dict(d)
    variants = {r["variant"] for r in d["results"]}
    assert {"portable", "native"} <= variants and {r["stage"] for r in d["results"]} == {"warp"}
    by_variant = {r["variant"]: r for r in d["results"]}
    # every implementation is the same warp: same counted work, outputs equal to the first one's
    assert len({r["flops"] for r in d["results"]}) == 1 and d["results"][0]["flops"] > 0
    for r in d["results"]:
        assert float(r["note"].rsplit(" ", 1)[1]) < 1e-5, r["note"]
    assert by_variant["portable"]["floor_ms"] > 0


def test_bench_grid_sample_refuses_bad_sizes_in_one_line(capsys, repo_script):
    bench = repo_script("benchmarks/bench_grid_sample.py")
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--size", "0"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("error:") == 1
