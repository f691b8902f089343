import json

import pytest
import torch
from peft import PeftConfig, PeftModel
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from conftest import COLOURS, run_cli, write_image
from imgtune.errors import UserError
from imgtune.inference.predict import Predictor, predict


@pytest.fixture(scope="module")
def square_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("square")
    return [
        write_image(folder / f"{name}.png", colour, size=(48, 48), seed=7 + i)
        for i, (name, colour) in enumerate(COLOURS.items())
    ]


def seeds_snippet(out, image_path):
    """The seeds' inference code, unchanged but for the path (and the label maps read from the run)."""
    id2label = {int(k): v for k, v in json.loads((out / "config.json").read_text())["id2label"].items()}
    label2id = {v: k for k, v in id2label.items()}
    config = PeftConfig.from_pretrained(out)
    model = AutoModelForImageClassification.from_pretrained(
        config.base_model_name_or_path,
        label2id=label2id,
        id2label=id2label,
        ignore_mismatched_sizes=True,
    )
    model = PeftModel.from_pretrained(model, out)
    image_processor = AutoImageProcessor.from_pretrained(out)
    image = Image.open(image_path)
    encoding = image_processor(image.convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        outputs = model(**encoding)
        logits = outputs.logits
    predicted_class_idx = logits.argmax(-1).item()
    return model.config.id2label[predicted_class_idx], logits.softmax(-1).max().item()


def test_seeds_snippet_agrees_with_imgtune_predict(lora_run, square_images):
    proc = run_cli("predict", lora_run, *square_images, "--json", "--top-k", "2", "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    results = {r["image"]: r["predictions"] for r in json.loads(proc.stdout)["results"]}
    assert len(results) == 3
    for path in square_images:
        label, prob = seeds_snippet(lora_run, path)
        ours = results[str(path)]
        assert ours[0]["label"] == label
        assert ours[0]["score"] == pytest.approx(prob, abs=0.05)  # PIL vs torchvision resampling only
        assert len(ours) == 2 and ours[0]["score"] >= ours[1]["score"]


def test_predict_a_folder_skips_unreadable_files(lora_run, square_images, tmp_path):
    for p in square_images:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    results, skipped = predict(lora_run, [str(tmp_path)], top_k=1)
    assert sorted(r["image"].rsplit("/", 1)[-1] for r in results) == ["blue.png", "green.png", "red.png"]
    assert [s["image"].rsplit("/", 1)[-1] for s in skipped] == ["broken.jpg"]


def test_predictor_batches_match_single_images(lora_run, square_images):
    predictor = Predictor.from_dir(lora_run, device="cpu", precision="fp32")
    batched, _ = predictor.predict([str(p) for p in square_images], top_k=3, batch_size=3)
    singles = [predictor.predict([str(p)], top_k=3)[0][0] for p in square_images]
    for b, s in zip(batched, singles):
        assert [x["label"] for x in b["predictions"]] == [x["label"] for x in s["predictions"]]
        assert [x["score"] for x in b["predictions"]] == pytest.approx([x["score"] for x in s["predictions"]], abs=1e-5)


def test_an_unreadable_image_named_explicitly_is_a_user_error(lora_run, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    with pytest.raises(UserError, match="cannot read image"):
        predict(lora_run, [str(bad)])
    proc = run_cli("predict", lora_run, bad)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cannot read image" in proc.stderr


def test_predictor_merges_the_adapter_and_keeps_its_answers(lora_run, square_images):
    merged = Predictor.from_dir(lora_run, device="cpu", precision="fp32")
    unmerged = Predictor.from_dir(lora_run, device="cpu", precision="fp32", merge=False)
    assert not isinstance(merged.model, PeftModel) and isinstance(unmerged.model, PeftModel)
    paths = [str(p) for p in square_images]
    for m, u in zip(merged.predict(paths, top_k=3)[0], unmerged.predict(paths, top_k=3)[0]):
        assert [x["label"] for x in m["predictions"]] == [x["label"] for x in u["predictions"]]
        assert [x["score"] for x in m["predictions"]] == pytest.approx([x["score"] for x in u["predictions"]], abs=1e-5)


def test_bf16_predict_agrees_on_the_labels_and_fp16_on_a_cpu_is_refused(lora_run, square_images):
    paths = [str(p) for p in square_images]
    bf16, _ = Predictor.from_dir(lora_run, device="cpu", precision="bf16").predict(paths, top_k=1)
    fp32, _ = Predictor.from_dir(lora_run, device="cpu", precision="fp32").predict(paths, top_k=1)
    assert [r["predictions"][0]["label"] for r in bf16] == [r["predictions"][0]["label"] for r in fp32]
    proc = run_cli("predict", lora_run, square_images[0], "--precision", "fp16")
    assert proc.returncode == 2 and "needs a GPU" in proc.stderr and proc.stderr.strip().count("\n") == 0
