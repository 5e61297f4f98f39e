"""Loaders on fixture sets in the hub schemas (parquet and JSONL + images), hub path mocked."""

import json

import datasets
import pytest

from tsugiki.benchmarks import samples
from tsugiki.benchmarks.loaders import load_ja_vg_vqa, load_ja_vlm_wild, load_mgsm
from tsugiki.benchmarks.runner import resolve_source
from tsugiki.benchmarks.specs import BENCHMARKS
from tsugiki.errors import BenchmarkError, TsugikiError
from helpers import TEST_DATA

FIXTURES = TEST_DATA / "benchmarks"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    vg, wild = samples.ja_vg_vqa_rows(), samples.ja_vlm_wild_rows()
    return {
        "vg_parquet": samples.write_parquet(vg, root / "vg_p" / "data" / "test-00000-of-00001.parquet").parent.parent,
        "vg_jsonl": samples.write_jsonl_with_images(vg, root / "vg_j" / "test.jsonl").parent,
        "wild_parquet": samples.write_parquet(wild, root / "wild_p" / "test.parquet").parent,
        "wild_jsonl": samples.write_jsonl_with_images(wild, root / "wild_j" / "test.jsonl").parent,
    }


def pixels(items):
    return [(i.id, i.question, i.answer, i.load_image().size, i.load_image().getpixel((32, 24))) for i in items]


def test_ja_vg_vqa_from_parquet_and_jsonl(sets):
    items = load_ja_vg_vqa(sets["vg_parquet"])
    assert [i.id for i in items] == ["1001", "1003", "1004", "1005", "1006", "1007"]  # qas[0] of each row
    assert (items[0].question, items[0].answer) == ("円は何色ですか？", "赤色です。")
    assert items[0].load_image().getpixel((32, 24)) == (255, 0, 0)  # the red circle's centre
    assert pixels(load_ja_vg_vqa(sets["vg_jsonl"])) == pixels(items)
    assert pixels(load_ja_vg_vqa(sets["vg_jsonl"] / "test.jsonl")) == pixels(items)  # a file, not a folder


def test_ja_vlm_wild_from_jsonl_and_parquet(sets):
    items = load_ja_vlm_wild(sets["wild_jsonl"])
    assert [i.id for i in items] == ["0", "1", "2", "3"]
    assert items[3].answer == "UFO"
    assert pixels(load_ja_vlm_wild(sets["wild_parquet"] / "test.parquet")) == pixels(items)


def test_committed_fixtures_equal_a_fresh_build(tmp_path):
    fresh = samples.write_samples(tmp_path)
    assert pixels(load_ja_vg_vqa(FIXTURES / "ja-vg-vqa-500")) == pixels(load_ja_vg_vqa(fresh / "ja-vg-vqa-500"))
    assert pixels(load_ja_vlm_wild(FIXTURES / "ja-vlm-wild")) == pixels(load_ja_vlm_wild(fresh / "ja-vlm-wild"))
    for f in (fresh / "sample-predictions").iterdir():
        assert (FIXTURES / "sample-predictions" / f.name).read_text() == f.read_text()


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def jsonl_rows(sets, name):
    return [json.loads(line) for line in (sets[name] / "test.jsonl").read_text().splitlines()]


def test_wrong_schema_lists_missing_and_extra_columns(sets, tmp_path):
    rows = jsonl_rows(sets, "vg_jsonl")
    rows[0].pop("flickr_id")
    rows[0]["caption"] = "x"
    with pytest.raises(BenchmarkError, match=r"test.jsonl:1: wrong schema: missing columns \['flickr_id'\]; "
                                             r"unexpected columns \['caption'\]"):
        load_ja_vg_vqa(write_rows(tmp_path / "test.jsonl", rows))
    wild = [{k: v for k, v in r.items() if k != "page_url"} for r in samples.ja_vlm_wild_rows()]
    path = samples.write_parquet(wild, tmp_path / "w" / "test.parquet")
    with pytest.raises(BenchmarkError, match=r"JA-VLM-Bench-In-the-Wild at .*: wrong schema: missing columns \['page_url'\]"):
        load_ja_vlm_wild(path)


def test_bad_qas(sets):
    rows = jsonl_rows(sets, "vg_jsonl")
    rows[1]["qas"][0].pop("a_objects")
    with pytest.raises(BenchmarkError, match=r":2 qas\[0\]: wrong schema: missing columns \['a_objects'\]"):
        load_ja_vg_vqa(write_rows(sets["vg_jsonl"] / "bad_a.jsonl", rows))
    rows[1]["qas"] = []
    with pytest.raises(BenchmarkError, match="qas must be a non-empty list"):
        load_ja_vg_vqa(write_rows(sets["vg_jsonl"] / "bad_b.jsonl", rows))


def test_missing_image_file(sets):
    rows = jsonl_rows(sets, "wild_jsonl")
    rows[2]["image"] = "images/gone.png"
    with pytest.raises(BenchmarkError, match=r"missing.jsonl:3: image file .*images/gone.png does not exist"):
        load_ja_vlm_wild(write_rows(sets["wild_jsonl"] / "missing.jsonl", rows))


def test_undecodable_image_is_an_error_at_load_image(tmp_path):
    rows = samples.ja_vlm_wild_rows()
    rows[0]["image"] = {"bytes": b"not a png", "path": "x.png"}
    items = load_ja_vlm_wild(samples.write_jsonl_with_images(rows, tmp_path / "test.jsonl"))
    with pytest.raises(BenchmarkError, match="item 0: cannot decode image file"):
        items[0].load_image()


def test_non_utf8_jsonl(sets, tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_bytes((sets["wild_jsonl"] / "test.jsonl").read_bytes().replace("りんご".encode(), b"\x82\xe8", 1))
    with pytest.raises(BenchmarkError, match=r"test.jsonl:1: not valid UTF-8 \(byte 0x82"):
        load_ja_vlm_wild(path)


def test_local_paths_that_do_not_hold_data(tmp_path):
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_ja_vg_vqa(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkError, match=r"no test.parquet"):
        load_ja_vg_vqa(tmp_path / "empty")


def test_hub_path_uses_datasets_with_the_hub_id(monkeypatch):
    calls = []

    def fake_load_dataset(path, *args, split=None, **kwargs):
        calls.append((path, split))
        rows = samples.ja_vg_vqa_rows()
        ds = datasets.Dataset.from_list(rows)
        return ds.cast_column("image", datasets.Image())

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = load_ja_vg_vqa()
    assert calls == [("SakanaAI/JA-VG-VQA-500", "test")]
    assert items[0].load_image().getpixel((32, 24)) == (255, 0, 0)
    load_ja_vg_vqa("SakanaAI/JA-VG-VQA-500", split="train")
    assert calls[-1] == ("SakanaAI/JA-VG-VQA-500", "train")


def test_hub_qas_as_a_dict_of_lists(monkeypatch):
    """datasets returns a Sequence-of-struct column as a dict of lists."""
    rows = samples.ja_vg_vqa_rows()
    for r in rows:
        r["qas"] = {k: [qa[k] for qa in r["qas"]] for k in r["qas"][0]}
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    assert [i.id for i in load_ja_vg_vqa()][:2] == ["1001", "1003"]


def test_hub_failure_is_one_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BenchmarkError, match=r"cannot load JA-VLM-Bench-In-the-Wild from the hub .*no network; pass a local copy"):
        load_ja_vlm_wild()


def test_mgsm_local_files(tmp_path):
    (tmp_path / "mgsm_ja.tsv").write_text("りんごは何個？\t3\n\nみかんは？\t1,200\n", encoding="utf-8")
    items = load_mgsm("ja", tmp_path)
    assert [(i.id, i.answer) for i in items] == [("0", 3), ("1", 1200)]
    bad = tmp_path / "bad.tsv"
    bad.write_text("q\t3\textra\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"bad.tsv:1: expected question<TAB>answer, found 3 fields"):
        load_mgsm("ja", bad)
    bad.write_text("q\t3\nq2\tthree\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"bad.tsv:2: answer 'three' is not an integer"):
        load_mgsm("ja", bad)
    bad.write_bytes("q\t3\n".encode() + b"\xff\t4\n")
    with pytest.raises(BenchmarkError, match=r"bad.tsv:2: not valid UTF-8"):
        load_mgsm("ja", bad)


def test_dataset_dir_resolution(tmp_path):
    (tmp_path / "JA-VG-VQA-500").mkdir()
    assert resolve_source(BENCHMARKS.get("ja-vg-vqa-500"), tmp_path) == tmp_path / "JA-VG-VQA-500"
    assert resolve_source(BENCHMARKS.get("mgsm-ja"), tmp_path) is None  # MGSM ships with the package
    with pytest.raises(BenchmarkError, match="ja-vlm-wild"):
        resolve_source(BENCHMARKS.get("ja-vlm-wild"), tmp_path)
    with pytest.raises(TsugikiError, match="did you mean 'mgsm-ja'"):
        BENCHMARKS.get("mgsm-jp")
