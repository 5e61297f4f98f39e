"""`tsugiki score | eval | report` through `tsugiki.cli.main`: JSON output, files, one-line errors."""

import argparse
import json

import pytest

from tsugiki import cli
from tsugiki.commands import bench
from helpers import TEST_DATA

FIXTURES = TEST_DATA / "benchmarks"


@pytest.fixture
def tsugiki(monkeypatch, capsys):
    """Run the CLI (with the bench verbs, wired in or not yet) → (exit code, stdout, stderr)."""
    if bench not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, bench))

    def run(*argv):
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def one_error_line(err, *fragments):
    lines = [l for l in err.splitlines() if l.startswith("tsugiki: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], lines[0]


def test_score_rouge_ja(tsugiki, tmp_path):
    pairs = jsonl(tmp_path / "p.jsonl", [
        {"prediction": "犬が好きです。", "reference": "猫が好きです。", "id": 7},    # 80.0 (4 of 5 words)
        {"prediction": "A UFO is flying.", "reference": "UFOが飛んでいます"},        # 18.18, and 0 when filtered
        {"prediction": "A UFO is flying.", "reference": "UFO"},                     # 33.33, kept
        {"prediction": "", "reference": "赤"},                                      # 0
    ])
    code, out, _ = tsugiki("score", "rouge-ja", pairs, "--per-item")
    assert code == 0
    data = json.loads(out)
    assert list(data) == ["n", "rougeL", "rougeL_low", "rougeL_high", "rougeL_ja", "rougeL_ja_low", "rougeL_ja_high",
                          "per_item"]
    assert [round(i["rougeL"], 2) for i in data["per_item"]] == [80.0, 18.18, 33.33, 0.0]
    assert [round(i["rougeL_ja"], 2) for i in data["per_item"]] == [80.0, 0.0, 33.33, 0.0]
    assert data["rougeL_ja_low"] <= data["rougeL_ja"] <= data["rougeL_ja_high"] and data["rougeL_ja"] < data["rougeL"]
    code, out, _ = tsugiki("score", "rouge-ja", pairs, "--no-language-filter")
    assert list(json.loads(out)) == ["n", "rougeL", "rougeL_low", "rougeL_high"]


def test_score_mgsm_both_extractions(tsugiki, tmp_path):
    pairs = jsonl(tmp_path / "m.jsonl", [{"response": "答えは1,000です。", "answer": 1000},
                                        {"response": "-5", "answer": -5},
                                        {"response": "答えは18です。検算: 18×2=36", "answer": "18"}])
    code, out, _ = tsugiki("score", "mgsm", pairs, "--per-item")
    data = json.loads(out)
    assert code == 0 and data["extraction"] == "robust" and data["acc"] == 100.0
    assert [i["extracted"] for i in data["per_item"]] == [1000, -5, 18]
    assert [i["correct_ja"] for i in data["per_item"]] == [True, False, True]  # "-5" is not Japanese
    code, out, _ = tsugiki("score", "mgsm", pairs, "--extraction", "sakana", "--per-item")
    data = json.loads(out)
    assert [i["extracted"] for i in data["per_item"]] == [0.0, 5.0, 36.0] and data["acc"] == 0.0
    assert set(data) >= {"acc", "acc_low", "acc_high", "acc_ja", "acc_ja_low", "acc_ja_high"}
    code, out, _ = tsugiki("score", "mgsm", pairs)
    assert "per_item" not in json.loads(out)


@pytest.mark.parametrize("content, fragments", [
    (b'{"prediction": "a", "reference": "b"}\n{"prediction": "\x82", "reference": "b"}\n', ["p.jsonl:2", "not valid UTF-8"]),
    (b'{"prediction": "a"}\n', ["p.jsonl:1", "missing 'reference'"]),
    (b'{"prediction": null, "reference": "b"}\n', ["p.jsonl:1", "'prediction' is null"]),
    (b'{"prediction": "a", "reference": "b"\n', ["p.jsonl:1", "invalid JSON"]),
    (b'["a", "b"]\n', ["p.jsonl:1", "expected a JSON object"]),
    (b'\n\n', ["no pairs"]),
    (b'{"prediction": 3, "reference": "b"}\n', ["pair 1", "must be text"]),
    (b'{"prediction": "\\ud800", "reference": "b"}\n', ["prediction 1 is not valid Unicode"]),
])
def test_score_bad_input_is_one_line(tsugiki, tmp_path, content, fragments):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    code, out, err = tsugiki("score", "rouge-ja", path)
    assert code == 2 and out == ""
    one_error_line(err, *fragments)


def test_score_missing_file_and_bad_answer(tsugiki, tmp_path):
    code, _, err = tsugiki("score", "mgsm", tmp_path / "none.jsonl")
    assert code == 2
    one_error_line(err, "cannot read", "none.jsonl")
    code, _, err = tsugiki("score", "mgsm", jsonl(tmp_path / "m.jsonl", [{"response": "3", "answer": "three"}]))
    one_error_line(err, "answer 1: 'three' is not a number")


def test_score_takes_more_metrics_from_other_modules():
    def add_kid(score_sub):
        p = score_sub.add_parser("kid")
        p.set_defaults(func=lambda args: 0)

    parser = argparse.ArgumentParser()
    score_sub = bench.register(parser.add_subparsers(dest="command"), score_verbs=[add_kid])
    score_sub.add_parser("other").set_defaults(func=lambda args: 0)
    assert parser.parse_args(["score", "kid"]).metric == "kid"
    assert parser.parse_args(["score", "fid", "a.npy", "b.npy"]).metric == "fid"  # built in, from images
    assert parser.parse_args(["score", "other"]).metric == "other"


def test_eval_predictions_then_report(tsugiki, tmp_path):
    out_dir = tmp_path / "res"
    code, out, err = tsugiki("eval", "--predictions", FIXTURES / "sample-predictions", "--dataset-dir", FIXTURES,
                             "--results-dir", out_dir, "-q")
    assert code == 0, err
    assert "| sample-predictions | **33.6** | **50.0** |" in out
    assert sorted(p.name for p in (out_dir / "sample-predictions").iterdir()) == sorted(
        f"{b}.{ext}" for b in ("mgsm-ja", "mgsm-en", "ja-vg-vqa-500", "ja-vlm-wild") for ext in ("json", "items.jsonl"))
    assert (out_dir / "leaderboard.html").read_text().startswith("<!DOCTYPE html>")
    # a second "model": the same predictions under another label, on MGSM-JA only, sakana extraction
    code, _, err = tsugiki("eval", "mgsm-ja", "--predictions", f"seedrule={FIXTURES / 'sample-predictions'}",
                           "--extraction", "sakana", "--results-dir", tmp_path / "res2", "-q")
    assert code == 0, err
    md_file, html_file = tmp_path / "lb.md", tmp_path / "lb.html"
    code, out, _ = tsugiki("report", out_dir, tmp_path / "res2" / "seedrule" / "mgsm-ja.json",
                           "--baseline", "seedrule", "--markdown", md_file, "--html", html_file)
    assert code == 0 and md_file.read_text() == out and html_file.exists()
    table = out.split("\n\n")[0].splitlines()
    assert table[2].startswith("| seedrule (baseline) | **33.6** | — |")
    assert table[3].startswith("| sample-predictions | **33.6 (+0.0)** | **50.0** |")


def test_eval_thresholds_and_bad_names(tsugiki, tmp_path):
    preds = FIXTURES / "sample-predictions"
    code, _, err = tsugiki("eval", "mgsm-ja", "--predictions", preds, "--min-score", "mgsm-ja=90",
                           "--results-dir", tmp_path, "-q")
    assert code == 1 and "FAILED sample-predictions / mgsm-ja: acc_ja = 33.60" in err and "below the minimum 90" in err
    code, _, err = tsugiki("eval", "mgsm-ja", "--predictions", preds, "--min-score", "mgsm-ja.acc=60",
                           "--results-dir", tmp_path, "-q")
    assert code == 0, err
    code, _, err = tsugiki("eval", "mgsm-jp", "--predictions", preds, "--results-dir", tmp_path)
    assert code == 2
    one_error_line(err, "unknown benchmark 'mgsm-jp'; did you mean 'mgsm-ja'?")
    code, _, err = tsugiki("eval", "--predictions", preds, "--min-score", "mgsm-ja.rouge=1")
    one_error_line(err, "mgsm-ja has no score 'rouge'")
    code, _, err = tsugiki("eval", "--results-dir", tmp_path)
    one_error_line(err, "nothing to evaluate")
    code, _, err = tsugiki("eval", "ja-vlm-wild", "--predictions", preds, "--dataset-dir", tmp_path)
    one_error_line(err, "JA-VLM-Bench-In-the-Wild: none of")
    code, _, err = tsugiki("report", tmp_path / "missing")
    one_error_line(err, "does not exist")


def test_eval_samples_with_the_embedded_tiny_model(tsugiki, tmp_path):
    code, out, err = tsugiki("eval", "--samples", "--limit", "3", "--results-dir", tmp_path, "-q")
    assert code == 0, err
    assert "| tiny-llama |" in out and "| sample-predictions |" in out
    result = json.loads((tmp_path / "tiny-llama" / "mgsm-ja.json").read_text())
    assert result["n"] == 3 and result["settings"]["generation"]["max_new_tokens"] == 16


def test_eval_list(tsugiki):
    code, out, _ = tsugiki("eval", "--list")
    assert code == 0 and [l.split()[0] for l in out.splitlines()] == ["mgsm-ja", "mgsm-en", "ja-vg-vqa-500", "ja-vlm-wild"]


def test_eval_vlm_models_go_through_the_vlm_predictor(tsugiki, tmp_path, monkeypatch):
    from tsugiki.benchmarks import cases
    from tsugiki.benchmarks.predictors import CallablePredictor

    seen = []

    def fake_vlm(model, **options):
        seen.append((str(model), options))

        def answer(items):
            return ["赤色です。" if item.load_image().getpixel((32, 24)) == (255, 0, 0) else "わかりません" for item in items]

        return CallablePredictor(answer, name=options["name"])

    monkeypatch.setattr(cases, "vlm_predictor", fake_vlm)
    (tmp_path / "vlm").mkdir()
    code, out, err = tsugiki("eval", "--vlm-model", f"evovlm={tmp_path / 'vlm'}", "--dataset-dir", FIXTURES,
                             "--max-new-tokens", "8", "--results-dir", tmp_path, "-q")
    assert code == 0, err
    assert [m for m, _ in seen] == [str(tmp_path / "vlm")] * 2 and seen[0][1]["max_new_tokens"] == 8
    items = [json.loads(l) for l in (tmp_path / "evovlm" / "ja-vg-vqa-500.items.jsonl").read_text().splitlines()]
    assert items[0]["prediction"] == "赤色です。" and items[0]["rougeL"] == 100.0  # the red circle, answered right
    assert "| evovlm |" in out and not (tmp_path / "evovlm" / "mgsm-ja.json").exists()


def test_eval_model_that_is_no_folder_is_one_line_before_anything_loads(tsugiki, tmp_path):
    (tmp_path / "weights.bin").write_text("x")
    for value, says in (("base=./nope", "no such folder"), (f"w={tmp_path / 'weights.bin'}", "not a folder")):
        code, _, err = tsugiki("eval", "--model", value, "--results-dir", tmp_path / "res")
        assert code == 2
        one_error_line(err, f"--model {value}: {says} (and not a hub id)")
    code, _, err = tsugiki("eval", "--vlm-model", "v=/nope/vlm", "--results-dir", tmp_path / "res")
    one_error_line(err, "--vlm-model v=/nope/vlm: no such folder")
    assert not (tmp_path / "res").exists()


def test_eval_model_with_a_word_level_tokenizer(tsugiki, tmp_path):
    """A tokenizer whose tokens are words (no piece of one spells a stop string) generates and stops."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "<pad>", "Question", ":", "Answer", "is", "=", "+", *map(str, range(10))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(tmp_path / "wl")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=32, max_position_embeddings=2048,
                                 bos_token_id=1, eos_token_id=2, pad_token_id=3)).save_pretrained(tmp_path / "wl")
    code, out, err = tsugiki("eval", "mgsm-ja", "--model", tmp_path / "wl", "--dataset-dir", FIXTURES, "--limit", "2",
                             "--max-new-tokens", "8", "--results-dir", tmp_path / "res", "-q")
    assert code == 0 and "Traceback" not in err, err
    items = (tmp_path / "res" / "wl" / "mgsm-ja.items.jsonl").read_text().splitlines()
    assert len(items) == 2 and all(isinstance(json.loads(l)["prediction"], str) for l in items)
