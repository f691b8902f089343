"""``imgtune compare`` through the real CLI: runs, report, re-run skips finished methods, failures."""

import json

import pytest
import yaml

from conftest import COLOURS, read_metrics, run_cli, write_class_folder
from imgtune.cli.main import main
from imgtune.compare.runner import Plan, compare, finished_metrics, method_hash
from imgtune.config import TrainConfig
from imgtune.errors import UserError
from test_report import assert_self_contained


def compare_args(model, dataset, out, methods: str, *extra: str) -> list:
    return [
        "compare",
        "--methods",
        methods,
        "--model",
        model,
        "--dataset",
        dataset,
        "--output-dir",
        out,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--precision",
        "fp32",
        "--num-workers",
        "0",
        "--test-fraction",
        "0.2",
        "--report-to",
        "none",
        *extra,
    ]


def table_row(markdown: str, method: str) -> str:
    rows = [l for l in markdown.splitlines() if l.startswith((f"| {method} |", f"| **{method}** |"))]
    assert len(rows) == 1, f"no single table row for {method} in report.md"
    return rows[0]


def test_compare_trains_each_method_reports_and_resumes(tmp_path, tiny_vit, colour_folder):
    out = tmp_path / "cmp"
    proc = run_cli(*compare_args(tiny_vit, colour_folder, out, "lora"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lora_done = (out / "lora" / "metrics.json").stat().st_mtime_ns

    # an interrupted or extended comparison: the finished method is reused, the new one trains
    proc = run_cli(*compare_args(tiny_vit, colour_folder, out, "lora,ia3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("already finished with this config") == 1
    assert (out / "lora" / "metrics.json").stat().st_mtime_ns == lora_done

    metrics = {m: read_metrics(out / m) for m in ("lora", "ia3")}
    assert metrics["lora"]["method"] == "lora" and metrics["ia3"]["method"] == "ia3"
    assert metrics["lora"]["splits"] == metrics["ia3"]["splits"]  # same data and split
    assert metrics["lora"]["trainable_params"] != metrics["ia3"]["trainable_params"]
    assert metrics["lora"]["config_hash"] == method_hash(
        TrainConfig(**{**yaml.safe_load((out / "configs" / "lora.yaml").read_text())}), "lora"
    )

    report = (out / "report.md").read_text()
    for name, m in metrics.items():
        row = table_row(report, name)
        assert f"{m['trainable_params']:,}" in row and f"{m['test']['accuracy']:.4f}" in row
        assert f"{m['validation']['accuracy']:.4f}" in row
        assert (out / "plots" / f"confusion_{name}.png").is_file()
        assert (out / name / "training_curves.png").is_file()  # train's own plots, via the hook
    for png in ("loss.png", "accuracy.png", "accuracy_vs_params.png", "per_class_accuracy.png"):
        assert (out / "plots" / png).is_file()
    assert_self_contained((out / "report.html").read_text(), expected_images=4 + 2)


def test_config_hash_decides_what_is_finished(tmp_path, tiny_vit, colour_folder):
    cfg = TrainConfig(model=str(tiny_vit), dataset=str(colour_folder), output_dir=str(tmp_path / "a"))
    same = cfg.replace(output_dir=str(tmp_path / "b"), progress=False, report_to="none", num_workers=0)
    assert method_hash(cfg, "lora") == method_hash(same, "lora")
    assert method_hash(cfg, "lora") != method_hash(cfg, "loha")
    for change in ({"seed": 1}, {"lr": 1e-3}, {"epochs": 2}, {"rank": 4}, {"dataset": str(tmp_path)}):
        assert method_hash(cfg, "lora") != method_hash(cfg.replace(**change), "lora"), change
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"config_hash": method_hash(cfg, "lora")}))
    assert finished_metrics(run, method_hash(cfg, "lora")) is not None
    assert finished_metrics(run, method_hash(cfg.replace(seed=1), "lora")) is None


def test_a_failing_method_is_reported_not_hidden(tmp_path, tiny_vit, colour_folder):
    out = tmp_path / "bad"
    proc = run_cli(*compare_args(tiny_vit, colour_folder, out, "boft", "--rank", "5"))  # 5 does not divide 32
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("imgtune: error: 1 of 1 methods did not finish: boft (boft cannot be applied"), last
    assert "| boft | failed: boft cannot be applied" in (out / "report.md").read_text()
    assert not (out / "boft" / "metrics.json").exists()


def test_bad_method_lists_fail_before_training(tmp_path, tiny_vit, colour_folder):
    cfg = TrainConfig(model=str(tiny_vit), dataset=str(colour_folder))
    with pytest.raises(UserError, match="unknown method 'lorax'"):
        compare(Plan(cfg, ["lora", "lorax"], tmp_path / "x", "t"))
    assert not (tmp_path / "x").exists()
    proc = run_cli(*compare_args(tiny_vit, colour_folder, tmp_path / "y", "lora", "--method", "loha"))
    assert proc.returncode == 2 and "compare takes --methods" in proc.stderr


def test_bad_data_or_model_fails_once_before_any_method_starts(tmp_path, tiny_vit, colour_folder):
    # through the CLI: one error line, no child process per method, nothing written
    out, missing = tmp_path / "cmp", tmp_path / "no-such-data"
    proc = run_cli(*compare_args(tiny_vit, missing, out, "lora,loha,ia3"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("imgtune: error:")]
    assert len(errors) == 1 and errors[0].startswith("imgtune: error: dataset ") and str(missing) in errors[0], errors
    assert "Traceback" not in proc.stderr and " failed: " not in proc.stderr and "== compare" not in proc.stdout
    assert not out.exists()  # no report.md, report.html or compare.json of a comparison that never ran

    # the same checks train makes on the model and the data, once, before the output folder exists
    cfg = TrainConfig(model=str(tiny_vit), dataset=str(colour_folder), epochs=1)
    one_class = write_class_folder(tmp_path / "one-class", per_class=3, classes={"red": COLOURS["red"]})
    (tmp_path / "empty-model").mkdir()
    for change, message in [
        ({"model": str(tmp_path / "no-model")}, "is not a directory holding a saved model"),
        ({"model": str(tmp_path / "empty-model")}, "cannot load model"),
        ({"dataset": str(one_class)}, "single class"),
        ({"classes": ["red", "purple"]}, r"classes \['purple'\] are not in the dataset"),
    ]:
        with pytest.raises(UserError, match=message):
            compare(Plan(cfg.replace(**change), ["lora", "loha"], out, "t"))
        assert not out.exists(), change


def test_empty_method_list_is_an_error(tmp_path, tiny_vit, colour_folder, capsys):
    for methods in ("", " , "):
        assert main(compare_args(str(tiny_vit), str(colour_folder), str(tmp_path / "cmp"), methods)) == 2
        assert capsys.readouterr().err.strip() == (
            "imgtune: error: --methods is empty: name at least one method, e.g. lora,loha"
        )
    with pytest.raises(UserError, match="--methods is empty"):
        compare(Plan(TrainConfig(model=str(tiny_vit), dataset=str(colour_folder)), [], tmp_path / "cmp", "t"))
    assert not (tmp_path / "cmp").exists()
