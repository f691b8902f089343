"""The command line: real subprocesses for the main paths, in-process main() for the error matrix."""

import json
import shutil

import pytest
from transformers import BertConfig

from conftest import one_error_line, read_metrics, run_cli, write_class_folder
from imgtune.cli.main import main


def test_train_from_the_command_line(tmp_path, tiny_vit, colour_folder):
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        "--config",
        "food101-lora",
        "--model",
        tiny_vit,
        "--dataset",
        colour_folder,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--grad-accum",
        "1",
        "--precision",
        "fp32",
        "--output-dir",
        out,
        "--report-to",
        "none",
        "--num-workers",
        "0",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert "trainable params:" in proc.stdout
    assert "Epoch | Training Loss | Validation Loss | Accuracy" in proc.stdout
    metrics = read_metrics(out)
    assert metrics["method"] == "lora" and len(metrics["history"]) == 2
    saved = (out / "imgtune.yaml").read_text()
    assert "target_modules:\n- query\n- value" in saved  # the preset's values, flags on top
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 16


def test_a_user_error_is_one_line_and_exit_2_in_a_real_process(tmp_path, colour_folder):
    proc = run_cli("train", "--model", tmp_path / "nowhere", "--dataset", colour_folder)
    assert proc.returncode == 2
    assert proc.stderr.startswith("imgtune: error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def not_a_classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(path)
    return path


def error_of(capsys, *argv) -> str:
    assert main([str(a) for a in argv]) == 2
    return one_error_line(capsys.readouterr().err)


def test_error_matrix(capsys, tmp_path, tiny_vit, colour_folder, not_a_classifier):
    train = ("train", "--epochs", "1", "--output-dir", tmp_path / "o", "--report-to", "none", "--no-progress")
    assert "unknown method 'lorra'" in error_of(
        capsys, *train, "--model", tiny_vit, "--dataset", colour_folder, "--method", "lorra"
    )
    assert "neither a file nor a preset" in error_of(capsys, *train, "--config", "food101-nope")
    assert "not a directory" in error_of(capsys, *train, "--model", tmp_path / "missing", "--dataset", colour_folder)
    assert "not an image classifier" in error_of(
        capsys, *train, "--model", not_a_classifier, "--dataset", colour_folder
    )
    (tmp_path / "empty").mkdir()
    assert "no usable images" in error_of(capsys, *train, "--model", tiny_vit, "--dataset", tmp_path / "empty")
    write_class_folder(tmp_path / "one", per_class=3, classes={"red": (255, 0, 0)})
    assert "single class" in error_of(capsys, *train, "--model", tiny_vit, "--dataset", tmp_path / "one")
    assert "target module 'qkv'" in error_of(
        capsys, *train, "--model", tiny_vit, "--dataset", colour_folder, "--target-modules", "qkv"
    )
    assert "fp16 mixed precision needs a GPU" in error_of(
        capsys, *train, "--model", tiny_vit, "--dataset", colour_folder, "--precision", "fp16"
    )
    assert "cannot take 64-px images" in error_of(
        capsys, *train, "--model", tiny_vit, "--dataset", colour_folder, "--image-size", "64"
    )
    assert "--resume /nowhere: no such checkpoint" in error_of(
        capsys, *train, "--model", tiny_vit, "--dataset", colour_folder, "--resume", "/nowhere"
    )
    rows = "".join(f"{p.relative_to(colour_folder)},{p.parent.name}\n" for p in sorted(colour_folder.rglob("*.*")))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rows.csv").write_text(rows)  # paths relative to the wrong folder: nothing readable
    err = error_of(capsys, *train, "--model", tiny_vit, "--dataset", tmp_path / "sub" / "rows.csv")
    assert "none of the" in err and "training images could be read" in err and "CSV's own folder" in err


def test_adapter_with_the_wrong_label_count(capsys, tmp_path, lora_run, colour_folder):
    copy = tmp_path / "run"
    shutil.copytree(lora_run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["id2label"] = {"0": "red", "1": "green"}
    config["label2id"] = {"red": 0, "green": 1}
    (copy / "config.json").write_text(json.dumps(config))
    image = next(colour_folder.rglob("*.png"))
    assert "3-class head but its config.json lists 2 labels" in error_of(capsys, "predict", copy, image)
    assert "not an imgtune output directory" in error_of(capsys, "predict", tmp_path, image)
    assert "no such file" in error_of(capsys, "predict", lora_run, tmp_path / "nope.jpg")
    assert "--top-k must be at least 1, got 0" in error_of(capsys, "predict", lora_run, image, "--top-k", "0")
    assert "--batch-size must be at least 1" in error_of(capsys, "predict", lora_run, image, "--batch-size", "0")
    assert "--batch-size must be at least 1" in error_of(
        capsys, "evaluate", lora_run, "--dataset", colour_folder, "--batch-size", "-3"
    )
    assert "--num-workers must be at least 0" in error_of(
        capsys, "evaluate", lora_run, "--dataset", colour_folder, "--num-workers", "-1"
    )
    (tmp_path / "a-file").write_text("")
    assert "File exists" in error_of(capsys, "merge", lora_run, "--to", tmp_path / "a-file")


def test_listing_commands(capsys):
    assert main(["presets"]) == 0
    assert "food101-adalora" in capsys.readouterr().out
    assert main(["methods"]) == 0
    assert "lokr" in capsys.readouterr().out


def test_our_warnings_are_one_line_and_libraries_keep_theirs():
    import io

    import imgtune.tuning.methods.adalora
    from imgtune.cli.main import show_warning

    ours, theirs = io.StringIO(), io.StringIO()
    show_warning(UserWarning("tinit scaled"), UserWarning, imgtune.tuning.methods.adalora.__file__, 103, ours)
    assert ours.getvalue() == "imgtune: warning: tinit scaled\n"
    show_warning(UserWarning("from peft"), UserWarning, "/site-packages/peft/tuners/x.py", 7, theirs)
    assert "x.py:7: UserWarning: from peft" in theirs.getvalue()


def test_version_help_defaults_and_examples_for_every_command(capsys):
    from imgtune import __version__
    from imgtune.cli.main import build_parser

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"imgtune {__version__}"
    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():
        text = parser.format_help()
        assert "examples:\n  " in text and f"imgtune {name}" in text.split("examples:")[1], name
    train_help = commands["train"].format_help()
    assert "(default: 0.005)" in train_help and "(default: 1.0)" in train_help  # lr, max_grad_norm
    assert "(default: 64)" in commands["evaluate"].format_help()


def test_a_mistyped_flag_gets_the_commands_usage_and_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--lrr", "0.1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: imgtune train") and "--lrr (did you mean --lr?)" in err and "0.1" not in err
