"""`surgery sweep`: grids, seeds, presets, the sweep directory, the table, launching, and real sweeps."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_run_config

from surgery.apps.cli import main
from surgery.errors import ConfigError, SweepError
from surgery.train.interrupt import Interrupted
from surgery.train import sweep
from surgery.train.record import COMPLETED, FAILED, RUNNING
from surgery.train.run_files import RunFiles
from surgery.train.sweeps import launch, paired, report, state, table
from surgery.train.sweeps.grid import (
    RECIPES,
    check_grids,
    grid_from_options,
    parse_grid_option,
    parse_seeds,
    plan,
    run_name,
)


@pytest.fixture
def base(tmp_path):
    return tiny_run_config(tmp_path, "base")


# ------------------------------------------------------------------ grids and seeds


def test_grid_values_are_read_as_yaml():
    assert parse_grid_option("mask.sparsity=0.95,0.98") == ("mask.sparsity", [0.95, 0.98])
    assert parse_grid_option("mask.method=random,snip") == ("mask.method", ["random", "snip"])
    assert parse_grid_option("lr_schedule.milestones=[15,23],[10,20]") == ("lr_schedule.milestones", [[15, 23], [10, 20]])
    assert parse_grid_option("lrsi.enabled=true,false") == ("lrsi.enabled", [True, False])


@pytest.mark.parametrize("text", ["mask.sparsity", "=0.9", "mask.sparsity=[0.9"])
def test_a_malformed_grid_option_is_refused(text):
    with pytest.raises(SweepError, match="--grid"):
        parse_grid_option(text)


def test_a_field_given_twice_is_refused():
    with pytest.raises(SweepError, match="given twice"):
        grid_from_options(["mask.sparsity=0.9", "mask.sparsity=0.95"])


def test_seeds_are_a_count_or_a_list():
    assert parse_seeds(3) == [0, 1, 2]
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("0,3,7") == [0, 3, 7]
    assert parse_seeds("7,") == [7]
    assert parse_seeds([4, 5]) == [4, 5]


@pytest.mark.parametrize("value", [0, "0", "two", [1, 1], [], [-1]])
def test_bad_seeds_are_refused(value):
    with pytest.raises(SweepError, match="seed"):
        parse_seeds(value)


@pytest.mark.parametrize(("grid", "message"), [
    ({"mask.sparsty": [0.9]}, "no field 'mask.sparsty'. Did you mean 'mask.sparsity'"),
    ({"mask.sparsity": []}, "mask.sparsity has no values"),
    ({"train.epochs": ["three"]}, "train.epochs must be an integer, got 'three'"),
    ({"mask.sparsity": [1.5]}, "outside \\[0, 1\\)"),
    ({"train.seed": [1, 2]}, "--seeds"),
    ({"output": ["a", "b"]}, "names each run"),
    ({"recipe": ["tsot"]}, "unknown recipe preset .tsot.*Did you mean .tost."),
    ({"mask.sparsity": [0.9, 0.9]}, "repeats a value"),
])
def test_every_bad_grid_is_a_clear_error(base, grid, message):
    with pytest.raises(SweepError, match=message):
        check_grids(base, [grid])


def test_all_problems_of_a_grid_are_reported_together(base):
    with pytest.raises(SweepError) as error:
        check_grids(base, [{"mask.sparsty": [0.9], "train.epochs": ["three"]}])
    assert "2 problems" in str(error.value)


def test_recipe_presets_set_tost_and_each_tweak_alone(base, tmp_path):
    runs = {r.cell["recipe"]: r.config for r in plan(base, [{"recipe": list(RECIPES)}], [0], tmp_path / "s")}
    tost, none = runs["tost"], runs["none"]
    assert set(tost.recipe) == {"ghost_skip", "soft_activation"} and tost.lrsi.enabled
    assert tost.label_smoothing.start == 0.1
    assert none.recipe == {} and not none.lrsi.enabled and none.label_smoothing.start == 0.0
    assert set(runs["gsk"].recipe) == {"ghost_skip"} and not runs["gsk"].lrsi.enabled
    assert set(runs["gsw"].recipe) == {"soft_activation"} and runs["gsw"].label_smoothing.start == 0.0
    assert runs["lrsi"].recipe == {} and runs["lrsi"].lrsi.enabled and runs["lrsi"].label_smoothing.start == 0.0
    assert runs["ls"].recipe == {} and not runs["ls"].lrsi.enabled and runs["ls"].label_smoothing.start == 0.1


def test_plan_is_the_product_times_seeds_and_grids_add_up_without_repeats(base, tmp_path):
    grids = [{"mask.method": ["random", "snip"], "mask.sparsity": [0.9, 0.95]},
             {"mask.method": ["random"], "mask.sparsity": [0.95, 0.98]}]
    runs = plan(base, grids, [0, 1], tmp_path / "s")
    assert len(runs) == (4 + 1) * 2  # random/0.95 is in both grids
    first = runs[0]
    assert first.name == "method-random_sparsity-0.9_seed-0" and first.seed == 0
    assert first.config.train.seed == 0 and first.config.mask.sparsity == 0.9
    assert first.run_dir == (tmp_path / "s" / "runs" / first.name).absolute()
    assert len({r.name for r in runs}) == len(runs)


def test_run_names_use_the_whole_field_where_last_parts_clash():
    assert run_name({"train.epochs": 3, "mask.epochs": 1, "optimizer.lr": 0.1}, 2) == \
        "train.epochs-3_mask.epochs-1_lr-0.1_seed-2"
    assert run_name({"recipe": {"ghost_skip": {"projection": "none"}}}, 0) == "recipe-ghost-skip-projection-none_seed-0"


# ------------------------------------------------------------------ the sweep directory


def test_a_directory_of_another_configs_sweep_is_refused_with_the_differences(base, tmp_path):
    out = tmp_path / "s"
    state.claim(out, base, [{"mask.sparsity": [0.9]}], [0], None)
    state.claim(out, base, [{"recipe": ["tost", "none"]}], [0, 1], None)  # same config, another grid: fine
    assert state.grid_fields(state.read_state(out)) == ["mask.sparsity", "recipe"]
    other = base.with_fields({"optimizer.lr": 0.05})
    with pytest.raises(SweepError, match=r"(?s)different config.*optimizer.lr: 0.1 .*0.05 now.*another --out"):
        state.claim(out, other, [{"mask.sparsity": [0.9]}], [0], None)


def test_a_changed_device_or_name_is_the_same_sweep(base, tmp_path):
    out = tmp_path / "s"
    state.claim(out, base, [{"mask.sparsity": [0.9]}], [0], None)
    state.claim(out, base.with_fields({"train.device": "cuda", "name": "renamed"}), [{"mask.sparsity": [0.9]}], [0], None)


# ------------------------------------------------------------------ the table


def fake_run(out: Path, name: str, cell: dict, seed: int, *, status=COMPLETED, last=None, best=None,
             message="", log=None, pairing=None) -> None:
    files = RunFiles(out / "runs" / name)
    files.root.mkdir(parents=True)
    files.sweep_cell.write_text(json.dumps({"cell": cell, "seed": seed}))
    if log is not None:
        files.log.write_text(log)
    if status is None:
        return
    record = {"status": status, "reason": {"message": message} if message else None,
              "accuracy": {"test": best if best is not None else last, "test_last": last,
                           "best_val": None if best is None else {"epoch": 3, "val_acc": 0.5, "test_acc": best}},
              "sparsity": 0.98, "training": {"seconds": 12.0}, "pairing": pairing}
    files.result.write_text(json.dumps(record))


@pytest.fixture
def finished_sweep(tmp_path, base):
    out = tmp_path / "s"
    reference = {"source": "ToST Table 2", "results": [
        {"mask.sparsity": 0.98, "recipe": "tost", "accuracy": 88.20, "std": 0.89}]}
    state.claim(out, base.with_fields({"reference": reference}), [{"mask.sparsity": [0.98], "recipe": ["tost", "none"]}],
                [0, 1, 2], None)
    for seed, (ours, plain) in enumerate([(0.90, 0.80), (0.92, 0.82), (0.91, 0.81)]):
        fake_run(out, f"tost{seed}", {"mask.sparsity": 0.98, "recipe": "tost"}, seed, last=ours - 0.01, best=ours)
        fake_run(out, f"none{seed}", {"mask.sparsity": 0.98, "recipe": "none"}, seed, last=plain, best=plain)
    fake_run(out, "none3", {"mask.sparsity": 0.98, "recipe": "none"}, 3, status=FAILED, message="loss diverged")
    fake_run(out, "none4", {"mask.sparsity": 0.98, "recipe": "none"}, 4, status=None,
             log="loading\nsurgery run: error: dataset 'x' not found\n")
    return out


def test_report_rebuilds_csv_markdown_and_plot_from_the_runs(finished_sweep):
    rows = report(finished_sweep)
    assert len(rows) == 8
    failed = {r["seed"]: r for r in rows if r["status"] == FAILED}
    assert failed[3]["error"] == "loss diverged"
    assert failed[4]["error"] == "surgery run: error: dataset 'x' not found"  # died before its record: the log
    text = (finished_sweep / "results.md").read_text()
    assert "| 0.98 | tost | 3 | **90.00 ± 1.00** | **91.00 ± 1.00** |" in text
    assert "| 0.98 | none | 3 (2 failed) |" in text
    assert "88.20 ± 0.89" in text and "paper (ToST Table 2)" in text
    # seed by seed against none; seeds 3 and 4 ran for none alone
    assert ("| 0.98 | tost | 3 | +10.00 | [+10.00, +10.00] | better (seeds 3, 4 run in only one of the two cells) |"
            in text)
    assert "3 pairs come from runs that recorded no pairing digests" in text
    assert "| none3 | loss diverged |" in text and "| none4 | surgery run: error: dataset 'x' not found |" in text
    csv_lines = (finished_sweep / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("mask.sparsity,recipe,seed,status,test_acc,test_acc_last,test_acc_best_val")
    assert len(csv_lines) == 9
    assert (finished_sweep / "accuracy-vs-sparsity.png").stat().st_size > 5_000


def paired_rows(arm: dict, ours: list[float], theirs: list[float], baseline: dict | None = None) -> list[dict]:
    baseline = baseline or {"recipe": "none"}
    return [{**cell, "seed": seed, "status": COMPLETED, "test_acc_last": a}
            for cell, values in ((arm, ours), (baseline, theirs)) for seed, a in enumerate(values)]


def test_pairs_cancel_what_a_seed_does_to_both_arms():
    # The seeds spread both arms by 10 points, yet ToST is one point better on every seed.
    rows = paired_rows({"recipe": "tost"}, [0.81, 0.91, 0.71], [0.80, 0.90, 0.70])
    [tost] = paired.compare(rows, ["recipe"], "test_acc_last")
    assert tost.baseline == {"recipe": "none"} and tost.n == 3
    assert tost.mean == pytest.approx(1.0) and tost.interval == pytest.approx((1.0, 1.0)) and tost.verdict == "better"


def test_the_interval_is_students_t_over_the_pairs():
    rows = paired_rows({"recipe": "tost"}, [0.51, 0.52, 0.53, 0.54], [0.5] * 4)
    [tost] = paired.compare(rows, ["recipe"], "test_acc_last")
    half = 3.182446 * 1.290994 / 2  # t(0.975, 3) x sample std of 1, 2, 3, 4 / sqrt(4)
    assert tost.interval == pytest.approx((2.5 - half, 2.5 + half), abs=1e-4) and tost.verdict == "better"
    rows = paired_rows({"recipe": "tost"}, [0.52, 0.48, 0.51], [0.5] * 3)
    [tost] = paired.compare(rows, ["recipe"], "test_acc_last")
    assert tost.verdict == "inconclusive"
    [worse] = paired.compare(paired_rows({"recipe": "ls"}, [0.4, 0.41], [0.5, 0.5]), ["recipe"], "test_acc_last")
    assert worse.verdict == "worse"
    [alone] = paired.compare(paired_rows({"recipe": "ls"}, [0.4], [0.5]), ["recipe"], "test_acc_last")
    assert alone.verdict == "needs 2+ pairs" and alone.interval is None


def test_an_arm_is_paired_with_the_none_cell_it_agrees_with():
    fields = ["mask.method", "recipe", "ghosts.remove_at"]
    rows = [*paired_rows({"mask.method": "synflow", "recipe": "tost-official", "ghosts.remove_at": "first_decay"},
                         [0.6, 0.6], [0.5, 0.5], {"mask.method": "synflow", "recipe": "none"}),
            *paired_rows({"mask.method": "random", "recipe": "tost"}, [0.3, 0.3], [0.4, 0.4],
                         {"mask.method": "random", "recipe": "none"})]
    official, random_tost = paired.compare(rows, fields, "test_acc_last")
    assert official.baseline == {"mask.method": "synflow", "recipe": "none"}  # remove_at is the arm's own field
    assert official.mean == pytest.approx(10.0) and random_tost.mean == pytest.approx(-10.0)
    [orphan] = paired.compare(paired_rows({"mask.method": "snip", "recipe": "tost"}, [0.5], [0.5],
                                          {"mask.method": "random", "recipe": "none"})[:1] + rows[2:4], fields,
                              "test_acc_last")
    assert orphan.baseline is None and "no `recipe: none` cell" in orphan.problem


def digests(init="i", mask="m", data="d"):
    return {"init": init, "mask": mask, "data": data}


@pytest.fixture
def unpaired_sweep(tmp_path, base):
    out = tmp_path / "u"
    state.claim(out, base, [{"mask.method": ["random", "snip"], "recipe": ["tost", "none"]}], [0, 1, 2], None)
    for seed in (0, 1, 2):
        fake_run(out, f"r-tost{seed}", {"mask.method": "random", "recipe": "tost"}, seed, last=0.6,
                 pairing=digests(mask="other" if seed == 1 else "m"))
        fake_run(out, f"r-none{seed}", {"mask.method": "random", "recipe": "none"}, seed, last=0.5, pairing=digests())
        fake_run(out, f"s-none{seed}", {"mask.method": "snip", "recipe": "none"}, seed, last=0.5, pairing=digests())
    fake_run(out, "s-tost0", {"mask.method": "snip", "recipe": "tost"}, 0, last=0.6, pairing=digests())
    fake_run(out, "s-tost7", {"mask.method": "snip", "recipe": "tost"}, 7, last=0.6, pairing=digests())
    return out


def test_a_paired_report_refuses_arms_that_do_not_share_seeds(unpaired_sweep, capsys):
    with pytest.raises(SweepError) as error:
        report(unpaired_sweep, paired=True)
    message = str(error.value)
    assert "mask.method=random, recipe=tost: seed 1: mask differ" in message
    assert "mask.method=snip, recipe=tost: seeds 1, 2, 7 run in only one of the two cells" in message
    assert not (unpaired_sweep / "results.md").exists()  # refused before anything is written
    assert main(["sweep", "--report", str(unpaired_sweep), "--paired"]) == 2
    assert "seed 1: mask differ" in capsys.readouterr().err
    report(unpaired_sweep)  # not asked for: the table says which pairs it left out
    text = (unpaired_sweep / "results.md").read_text()
    assert "| random | tost | 2 | +10.00 | [+10.00, +10.00] | better (seed 1: mask differ) |" in text
    assert "| snip | tost | 1 | +10.00 | — | needs 2+ pairs (seeds 1, 2, 7 run in only one of the two cells) |" in text
    assert (unpaired_sweep / "paired-differences.png").stat().st_size > 5_000


def test_sweep_paired_must_be_a_boolean(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"recipe": "none", "sweep": {"paired": "yes", "grid": {"recipe": ["none"]}}}))
    with pytest.raises(ConfigError, match=r"sweep.paired is 'yes'; give true"):
        sweep(config, dry_run=True)


def test_report_of_a_directory_without_runs_is_refused(tmp_path):
    with pytest.raises(SweepError, match="holds no sweep runs"):
        report(tmp_path)
    assert main(["sweep", "--report", str(tmp_path)]) == 2


# ------------------------------------------------------------------ launching


def test_local_runs_split_the_cpu_cores_or_take_turns_on_the_gpus():
    cpu = launch.LocalLauncher(2, cpus=16)
    assert cpu.environment(0)["OMP_NUM_THREADS"] == "8"
    one_gpu = launch.LocalLauncher(4, gpus=["0"], cpus=16)
    assert one_gpu.environment(3).get("CUDA_VISIBLE_DEVICES") == __import__("os").environ.get("CUDA_VISIBLE_DEVICES")
    assert one_gpu.environment(3)["OMP_NUM_THREADS"] == "4"
    gpus = launch.LocalLauncher(4, gpus=["0", "1", "2", "3"], nproc_per_run=2)
    assert [gpus.environment(s)["CUDA_VISIBLE_DEVICES"] for s in range(3)] == ["0,1", "2,3", "0,1"]


def test_a_ddp_run_is_a_torchrun_command(base, tmp_path):
    run = plan(base, [{"mask.sparsity": [0.9]}], [0], tmp_path / "s")[0]
    plain = launch.command(launch.Job(run, resume=False))
    assert plain[1:4] == ["-m", "surgery", "run"] and "--resume" not in plain
    ddp = launch.command(launch.Job(run, resume=True), nproc_per_run=4)
    assert ddp[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"] and ddp[-1] == "--resume"


class FakeLauncher:
    """Jobs end after a number of polls with the exit code their name asks for."""

    slots = 2

    def __init__(self):
        self.started, self.signals = [], []

    def start(self, job, slot):
        self.started.append(job.run.name)
        return {"name": job.run.name, "polls": 2}

    def exit_code(self, handle):
        handle["polls"] -= 1
        if handle.get("stopped") or handle["polls"] < 0:
            return 130 if handle.get("stopped") else (1 if "fail" in handle["name"] else 0)
        return None

    def stop(self, handle, signum):
        self.signals.append(signum)
        handle["stopped"] = True

    def wait(self, handles, seconds):
        pass


class Named:
    def __init__(self, name):
        self.name = name


def test_a_failed_run_does_not_stop_the_others(monkeypatch):
    monkeypatch.setattr(launch, "POLL_SECONDS", 0)
    ended = []
    jobs = [launch.Job(Named(n), resume=False) for n in ("a", "fail-b", "c", "d")]
    launch.execute(jobs, FakeLauncher(), lambda job, code: ended.append((job.run.name, code)), lambda s, n: "")
    assert sorted(ended) == [("a", 0), ("c", 0), ("d", 0), ("fail-b", 1)]


def test_a_signal_is_passed_on_to_the_running_runs_once(monkeypatch):
    monkeypatch.setattr(launch, "POLL_SECONDS", 0)
    fake, ended = FakeLauncher(), []

    def on_end(job, code):
        ended.append(job.run.name)
        if job.run.name == "a":
            raise Interrupted(signal.SIGTERM)

    jobs = [launch.Job(Named(n), resume=False) for n in ("a", "b", "c", "d")]
    with pytest.raises(Interrupted, match="1 stopped") as stop:
        launch.execute(jobs, fake, on_end, lambda signum, stopped: f"{stopped} stopped")
    assert stop.value.signum == signal.SIGTERM
    assert fake.signals == [signal.SIGTERM]  # b, once; c and d never start
    assert fake.started == ["a", "b"] and ended == ["a", "b"]


def test_jobs_and_processes_must_be_positive(base, tmp_path):
    with pytest.raises(SweepError, match="--jobs 0"):
        sweep(base, {"mask.sparsity": [0.9]}, jobs=0, out=tmp_path / "s")
    assert main(["sweep", "x.yaml", "--jobs", "0", "--grid", "mask.sparsity=0.9"]) == 2
    with pytest.raises(SweepError, match="--nproc-per-run 0"):
        sweep(base, {"mask.sparsity": [0.9]}, nproc_per_run=0, out=tmp_path / "s")


def test_slurm_without_submitit_names_the_extra(monkeypatch, tmp_path):
    from surgery.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(MissingExtraError, match=r"tost-surgery\[slurm\]"):
        launch.SlurmLauncher(tmp_path, jobs=1)


def test_dry_run_lists_the_runs_and_runs_nothing(base, tmp_path):
    rows = sweep(base, {"mask.sparsity": [0.9, 0.95]}, seeds=2, out=tmp_path / "s", dry_run=True)
    assert [r["status"] for r in rows] == ["pending"] * 4
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ real sweeps


def sweep_config(tmp_path) -> Path:
    config = tiny_run_config(tmp_path, "tiny-sweep", train={"epochs": 1, "device": "cpu"}, lr_schedule={"milestones": []},
                             recipe="none", export={"verify": False, "onnx": False})
    path = tmp_path / "tiny-sweep.yaml"
    path.write_text(config.to_yaml())
    return path


@pytest.mark.slow
def test_a_sweep_runs_resumes_and_grows(tmp_path, capsys):
    path, out = sweep_config(tmp_path), tmp_path / "sweep"
    argv = ["sweep", str(path), "--grid", "mask.sparsity=0.5,0.8", "--seeds", "1", "--jobs", "2", "--out", str(out)]
    assert main(argv) == 0
    rows = [r for r in table.collect(out)]
    assert [r["status"] for r in rows] == [COMPLETED, COMPLETED]
    assert {round(r["sparsity"], 1) for r in rows} == {0.5, 0.8}
    for name in ("results.csv", "results.md", "accuracy-vs-sparsity.png"):
        assert (out / name).is_file()
    printed = capsys.readouterr().out
    assert "[2/2]" in printed and "completed" in printed

    assert main(argv) == 0  # again: nothing to run
    assert "2 already complete, 0 to run" in capsys.readouterr().out

    grown = ["sweep", str(path), "--grid", "mask.sparsity=0.5,0.8,0.9", "--seeds", "1", "--out", str(out)]
    assert main(grown) == 0
    assert "2 already complete, 1 to run" in capsys.readouterr().out
    assert len(table.collect(out)) == 3

    changed = ["sweep", str(path), "--set", "optimizer.lr=0.05", "--grid", "mask.sparsity=0.5", "--out", str(out)]
    assert main(changed) == 2
    assert "optimizer.lr: 0.1" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failing_cell_is_a_failed_row_and_the_rest_complete(tmp_path):
    rows = sweep(sweep_config(tmp_path), {"data.dataset": ["synthetic", "imagefolder:/no/such/folder"]}, jobs=2,
                 out=tmp_path / "s")
    status = {r["data.dataset"]: r for r in rows}
    assert status["synthetic"]["status"] == COMPLETED
    assert status["imagefolder:/no/such/folder"]["status"] == FAILED
    assert "/no/such/folder" in status["imagefolder:/no/such/folder"]["error"]


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "s"
    path = sweep_config(tmp_path)
    rows = sweep(path, {"mask.sparsity": [0.5]}, out=out)
    run_dir = Path(rows[0]["run_dir"])
    record = json.loads(RunFiles(run_dir).result.read_text())
    record["status"] = RUNNING  # as a run killed mid-training leaves it
    RunFiles(run_dir).result.write_text(json.dumps(record))
    rows = sweep(path, {"mask.sparsity": [0.5]}, out=out)
    assert rows[0]["status"] == COMPLETED
    assert "resumed from" in RunFiles(run_dir).log.read_text()


@pytest.mark.slow
def test_slurm_launcher_runs_through_submitit(tmp_path):
    pytest.importorskip("submitit")
    rows = sweep(sweep_config(tmp_path), {"mask.sparsity": [0.5]}, out=tmp_path / "s", launcher="slurm",
                 slurm={"cluster": "local", "time_min": 10})
    assert rows[0]["status"] == COMPLETED
    assert any((tmp_path / "s" / "slurm").iterdir())


def test_the_sweep_section_of_a_config_file_is_its_default_grid(tmp_path):
    path = sweep_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["sweep"] = {"seeds": 2, "grids": [{"mask.sparsity": [0.5, 0.8]}, {"mask.sparsity": [0.9]}]}
    path.write_text(yaml.safe_dump(data))
    rows = sweep(path, out=tmp_path / "s", dry_run=True)
    assert len(rows) == 6
    from surgery.train import RunConfig

    assert RunConfig.from_yaml(path).mask.sparsity == 0.8  # `surgery run` reads the same file, sweep: aside


@pytest.mark.slow
def test_each_run_can_be_a_ddp_job(tmp_path):
    rows = sweep(sweep_config(tmp_path), {"mask.sparsity": [0.5]}, out=tmp_path / "s", nproc_per_run=2)
    assert rows[0]["status"] == COMPLETED
    record = json.loads(RunFiles(Path(rows[0]["run_dir"])).result.read_text())
    assert record["device"] == "cpu x 2"


def test_a_value_that_needs_its_cells_other_fields_is_checked_with_them(base, tmp_path):
    # allow_empty_layers is refused beside a layer-wise random mask, accepted beside a global SNIP ranking
    grid = {"mask.method": ["snip"], "mask.allow_empty_layers": [True]}
    assert [run.config.mask.allow_empty_layers for run in plan(base, [grid], [0], tmp_path)] == [True]
    with pytest.raises(SweepError, match=r"--grid mask.allow_empty_layers=true: .*'random' with scope 'layer' cannot"):
        check_grids(base, [{"mask.method": ["random"], "mask.allow_empty_layers": [True]}])


@pytest.mark.parametrize(("sparsities", "span"), [([95.0], (85.0, 105.0)), ([90.0, 98.0], None)])
def test_the_sparsity_axis_is_ticked_at_the_grids_values_without_offset_notation(sparsities, span):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from surgery.train.sweeps.plot import sparsity_axis

    ax = Figure().add_subplot()
    ax.plot([s + 0.1 for s in sparsities], [1.0] * len(sparsities))  # nudged lines around the values
    sparsity_axis(ax, sparsities)
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{s:g}%" for s in sparsities]
    if span:
        assert ax.get_xlim() == span
