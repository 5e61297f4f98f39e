"""Japanese ROUGE scoring speed: tsugiki against a plain re-implementation of the seed's pipeline.

Not a test: prints a table. Both score the same 500 pairs (MeCab tokenisation + fastText language
ID + bootstrap, all six scores rouge1/2/L and their *_ja) in this process, and must give equal
numbers (checked exactly, not approximately). Per-call costs are timed as the seed has them: it
loads fastText once per benchmark object but builds a MeCab tagger and ROUGE scorer in every
``rouge_ja`` call; tsugiki keeps one tagger and one fastText model, and its per-text cache is
emptied before each timed run (nothing carries over between runs).

    python perf/scoring_speed.py [--pairs 500] [--repeat 3] [--seed 0]

The pairs mimic the two VQA benchmarks: half JA-VG-VQA-500 style (answers of a few words), half
JA-VLM-Bench-In-the-Wild style (a sentence or three of reference; predictions of up to six
sentences, some in English, a few empty or emoji only).
"""

from __future__ import annotations

import argparse
import random
import time

SUBJECTS = ["白い犬", "赤い車", "男性", "二人の子供", "猫", "大きな木", "青い空", "女性", "古い建物", "電車"]
PLACES = ["公園", "道路", "部屋の中", "駅の前", "海辺", "テーブルの上", "山の上", "川の近く"]
ACTIONS = ["走っています", "座っています", "止まっています", "写っています", "立っています", "見えます", "遊んでいます"]
EXTRA = ["背景には雲が見えます。", "天気は晴れです。", "周りには人がいません。", "写真は夜に撮られたようです。",
         "左側に看板があります。", "全体的に明るい雰囲気です。"]
SHORT = ["赤", "2つ", "白い犬", "テーブルの上", "UFO", "晴れ", "電車です", "3人", "木の下", "青色"]
ENGLISH = ["A white dog is running in the park.", "There are two people.", "It is red.", "The sky is blue and clear.",
           "I cannot tell from the image.", "UFO"]


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(PLACES)}で{rng.choice(SUBJECTS)}が{rng.choice(ACTIONS)}。"


def make_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    refs, preds = [], []
    for i in range(n):
        if i % 2 == 0:  # JA-VG-VQA-500 style
            refs.append(rng.choice(SHORT))
            preds.append(rng.choice([rng.choice(SHORT), sentence(rng), rng.choice(ENGLISH), rng.choice(SHORT) + "です。"]))
        else:  # In-the-Wild style
            refs.append("".join(sentence(rng) for _ in range(rng.randint(1, 3))) + rng.choice(["", rng.choice(EXTRA)]))
            kind = rng.random()
            if kind < 0.15:
                preds.append(" ".join(rng.choice(ENGLISH) for _ in range(rng.randint(1, 4))))
            elif kind < 0.2:
                preds.append(rng.choice(["", "🙂🙂", "  "]))
            else:
                preds.append("".join(sentence(rng) if rng.random() < 0.7 else rng.choice(EXTRA)
                                     for _ in range(rng.randint(1, 6))))
    return refs, preds


def tsugiki_scorer():
    from tsugiki.benchmarks import langid, rouge, text

    tokenizer, lid = text.MecabTokenizer(), langid.LanguageID()

    def run(refs, preds):
        lid.clear_cache()  # nothing remembered from the previous run
        res = rouge.rouge_ja(refs, preds, tokenizer=tokenizer, language_id=lid)
        return {k: v.value for k, v in res.scores.items()}

    return run


def seed_scorer():
    from tsugiki.benchmarks.reference import SeedLanguageDetector, seed_compute_score

    detector = SeedLanguageDetector()  # the seed loads fastText once, in the benchmark's __init__

    def run(refs, preds):
        return {k: v for k, v in seed_compute_score(refs, preds, detector).items() if not k.endswith("_interval")}

    return run


def best_time(fn, refs, preds, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(refs, preds)
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest counts")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    refs, preds = make_pairs(args.pairs, args.seed)
    run_seed, run_tsugiki = seed_scorer(), tsugiki_scorer()  # models loaded once each, outside the timing
    run_tsugiki(refs[:4], preds[:4]), run_seed(refs[:4], preds[:4])
    t_seed, seed = best_time(run_seed, refs, preds, args.repeat)
    t_ours, ours = best_time(run_tsugiki, refs, preds, args.repeat)
    keys = ["rouge1", "rouge2", "rougeL", "rouge1_ja", "rouge2_ja", "rougeL_ja"]
    print(f"{args.pairs} pairs (mean reference {sum(map(len, refs)) / len(refs):.0f} chars, "
          f"prediction {sum(map(len, preds)) / len(preds):.0f} chars), best of {args.repeat}")
    print(f"{'':10} {'seconds':>8}  " + " ".join(f"{k:>10}" for k in keys))
    print(f"{'seed':10} {t_seed:8.3f}  " + " ".join(f"{seed[k]:10.4f}" for k in keys))
    print(f"{'tsugiki':10} {t_ours:8.3f}  " + " ".join(f"{ours[k]:10.4f}" for k in keys))
    equal = all(seed[k] == ours[k] for k in keys)
    print(f"equal numbers: {'yes (exactly)' if equal else 'NO'}; speed-up: {t_seed / t_ours:.1f}x")
    if not equal:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
