"""Tiny sample sets in exactly the hub schemas of JA-VG-VQA-500 and JA-VLM-Bench-In-the-Wild, with
images drawn by Pillow, plus a folder of sample predictions: offline stand-ins for the real data
(which is fetched from the hub), used by the tests and by ``pytest benchmarks/`` without options.

``write_samples(folder)`` writes::

    ja-vg-vqa-500/data/test-00000-of-00001.parquet   (the hub's layout, written by ``datasets``)
    ja-vlm-wild/test.jsonl + ja-vlm-wild/images/*.png (the JSONL + image folder format)
    sample-predictions/<benchmark>.jsonl             ({"id", "prediction"} per item)
"""

from __future__ import annotations

import io
from pathlib import Path

from tsugiki.benchmarks.jsonl import write_jsonl


def _draw(kind: str, colour: str, background: str = "white", size: tuple[int, int] = (64, 48)) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, background)
    d = ImageDraw.Draw(img)
    w, h = size
    if kind == "circle":
        d.ellipse((w // 4, h // 6, 3 * w // 4, 5 * h // 6), fill=colour)
    elif kind == "square":
        d.rectangle((w // 4, h // 6, 3 * w // 4, 5 * h // 6), fill=colour)
    elif kind == "saucer":
        d.ellipse((w // 6, h // 3, 5 * w // 6, 2 * h // 3), fill=colour)
        d.ellipse((w // 3, h // 5, 2 * w // 3, h // 2), fill="lightgrey")
    elif kind == "triangles":
        d.polygon([(4, h - 6), (w // 2 - 4, h - 6), (w // 4, 6)], fill=colour)
        d.polygon([(w // 2 + 4, h - 6), (w - 4, h - 6), (3 * w // 4, 6)], fill=colour)
    elif kind == "line":
        d.line((4, h // 2, w - 4, h // 2), fill=colour, width=3)
    elif kind == "car":
        d.rectangle((8, h // 3, w - 8, 2 * h // 3 + 4), fill=colour)
        for x in (16, w - 16):
            d.ellipse((x - 6, 2 * h // 3, x + 6, 2 * h // 3 + 12), fill="black")
    else:
        raise ValueError(kind)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# (image_id, drawing, [(qa_id, question, answer)]); evaluation uses the first QA of each row.
_VG = [
    (1, ("circle", "red"), [(1001, "円は何色ですか？", "赤色です。"), (1002, "背景は何色ですか？", "白")]),
    (2, ("square", "blue"), [(1003, "何が描かれていますか？", "青い四角形")]),
    (3, ("saucer", "grey", "skyblue"), [(1004, "空に何が飛んでいますか？", "UFO")]),
    (4, ("triangles", "green"), [(1005, "三角形はいくつありますか？", "2つ")]),
    (5, ("circle", "yellow"), [(1006, "この図形の色は？", "黄色")]),
    (6, ("line", "black"), [(1007, "線は何本ありますか？", "1本の線があります。")]),
]
_VG_PREDICTIONS = {  # exact, partial, the "UFO" case, empty, emoji only, English sharing a token ("1")
    "1001": "赤色です。", "1003": "青い四角です", "1004": "UFO", "1005": "", "1006": "🌟🌟", "1007": "There is 1 line.",
}

_WILD_IMAGES = {"apple.png": ("circle", "red"), "car.png": ("car", "blue"), "ufo.png": ("saucer", "grey", "skyblue")}
_WILD = [
    ("apple.png", "この画像には何が写っていますか？", "赤いりんごが一つ写っています。"),
    ("apple.png", "りんごは何色ですか？", "赤色です。"),
    ("car.png", "この乗り物は何ですか？", "青い車です。"),
    ("ufo.png", "空に浮かんでいるものは何ですか？", "UFO"),
]
_WILD_PREDICTIONS = {"0": "りんごが写っています。", "1": "赤", "2": "A blue car.", "3": "UFOです"}


def ja_vg_vqa_rows() -> list[dict]:
    """Rows in the JA-VG-VQA-500 schema; ``image`` is ``{"bytes", "path"}`` as ``datasets`` stores it."""
    rows = []
    for image_id, drawing, qas in _VG:
        png = _draw(*drawing)
        rows.append({
            "image_id": image_id, "url": f"https://example.invalid/vg/{image_id}.png", "width": 64, "height": 48,
            "coco_id": None, "flickr_id": None,
            "qas": [{"qa_id": q, "question": question, "answer": answer, "q_objects": [], "a_objects": []}
                    for q, question, answer in qas],
            "image": {"bytes": png, "path": f"{image_id}.png"},
        })
    return rows


def ja_vlm_wild_rows() -> list[dict]:
    """Rows in the JA-VLM-Bench-In-the-Wild schema (4 questions over 3 images)."""
    pngs = {name: _draw(*d) for name, d in _WILD_IMAGES.items()}
    return [{"page_url": f"https://example.invalid/page/{name}", "image_url": f"https://example.invalid/{name}",
             "image": {"bytes": pngs[name], "path": name}, "question": q, "answer": a} for name, q, a in _WILD]


def write_parquet(rows: list[dict], path: Path) -> Path:
    """Rows to a parquet file via ``datasets``, with the ``image`` column typed as ``Image``."""
    import datasets

    ds = datasets.Dataset.from_list(rows)
    ds = ds.cast_column("image", datasets.Image())
    path.parent.mkdir(parents=True, exist_ok=True)
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # no bar for a six-row file
    try:
        ds.to_parquet(str(path))
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    return path


def write_jsonl_with_images(rows: list[dict], path: Path, image_dir: str = "images") -> Path:
    """Rows to JSONL with each image saved under ``image_dir/`` and its relative path in ``image``."""
    (path.parent / image_dir).mkdir(parents=True, exist_ok=True)
    out = []
    for row in rows:
        rel = f"{image_dir}/{row['image']['path']}"
        (path.parent / rel).write_bytes(row["image"]["bytes"])
        out.append({**row, "image": rel})
    return write_jsonl(path, out)


def write_sample_predictions(folder: Path) -> Path:
    """``<benchmark>.jsonl`` files for the sample sets and for the full MGSM sets: MGSM-JA answers
    are right in Japanese (1 in 3), right in English (1 in 3) or missing; MGSM-EN right every other."""
    from tsugiki.benchmarks.loaders import load_mgsm

    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "ja-vg-vqa-500.jsonl", ({"id": k, "prediction": v} for k, v in _VG_PREDICTIONS.items()))
    write_jsonl(folder / "ja-vlm-wild.jsonl", ({"id": k, "prediction": v} for k, v in _WILD_PREDICTIONS.items()))
    ja = [("答えは{}です。", "The answer is {}.", "わかりません。")[int(i.id) % 3].format(i.answer) for i in load_mgsm("ja")]
    write_jsonl(folder / "mgsm-ja.jsonl", ({"id": str(i), "prediction": p} for i, p in enumerate(ja)))
    en = [f"The answer is {i.answer + int(i.id) % 2}." for i in load_mgsm("en")]
    write_jsonl(folder / "mgsm-en.jsonl", ({"id": str(i), "prediction": p} for i, p in enumerate(en)))
    return folder


def write_samples(folder: str | Path) -> Path:
    folder = Path(folder)
    write_parquet(ja_vg_vqa_rows(), folder / "ja-vg-vqa-500" / "data" / "test-00000-of-00001.parquet")
    write_jsonl_with_images(ja_vlm_wild_rows(), folder / "ja-vlm-wild" / "test.jsonl")
    write_sample_predictions(folder / "sample-predictions")
    return folder


# lm-eval tasks in lm-eval's own YAML format over local JSONL: a multiple-choice (loglikelihood) and a
# generation (generate_until + exact_match) task, what `pytest benchmarks/` and `tsugiki eval --samples` run
# as lm-eval:ja-sample-mc and lm-eval:ja-sample-gen
SAMPLE_TASKS = ("ja-sample-mc", "ja-sample-gen")
_CAPITALS = [("日本", "東京"), ("フランス", "パリ"), ("イギリス", "ロンドン"), ("イタリア", "ローマ"),
             ("ドイツ", "ベルリン"), ("スペイン", "マドリード"), ("ロシア", "モスクワ"), ("エジプト", "カイロ")]


def write_sample_tasks(folder: str | Path) -> Path:
    """The two sample lm-eval tasks (YAML + JSONL; the YAMLs name their JSONL by absolute path, as lm-eval
    reads ``data_files`` from the working folder) in ``folder``, for ``--lm-eval-include``."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cities = [c for _, c in _CAPITALS]
    mc = [{"question": f"{country}の首都はどこですか。", "choices": [city, cities[(i + 1) % 8], cities[(i + 3) % 8]],
           "label": 0} for i, (country, city) in enumerate(_CAPITALS)]
    gen = [{"question": f"{a}たす{b}はいくつですか。", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (2, 5), (6, 1),
                                                                                  (4, 4), (5, 3), (2, 2), (7, 1)]]
    common = {"dataset_path": "json", "test_split": "test", "metadata": {"version": 1.0}}
    specs = {
        "ja-sample-mc": (mc, {"output_type": "multiple_choice", "doc_to_text": "質問: {{question}}\n答え:",
                              "doc_to_choice": "choices", "doc_to_target": "label",
                              "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}),
        "ja-sample-gen": (gen, {"output_type": "generate_until", "doc_to_text": "質問: {{question}}\n答え:",
                                "doc_to_target": "answer",
                                "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
                                "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                                                 "higher_is_better": True}]}),
    }
    for name, (rows, spec) in specs.items():
        data = write_jsonl(folder / f"{name}.jsonl", rows)
        doc = {"task": name, **common, "dataset_kwargs": {"data_files": {"test": str(data.resolve())}}, **spec}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return folder
