"""`tsugiki merge` on bad input: one line naming the file/tensor, exit code 2, nothing written."""

import argparse
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tsugiki.cli import main
from helpers import copy_model, weights


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tsugiki.cli", *map(str, args)], capture_output=True, text=True)


def write_recipe(tmp_path, body, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(body)
    return path


def linear(*models):
    return "merge_method: linear\nmodels:\n" + "".join(f"  - {{model: {m}, parameters: {{weight: 1.0}}}}\n" for m in models)


def assert_clean_failure(res, out, *patterns):
    assert res.returncode == 2, res.stderr
    err_lines = [l for l in res.stderr.splitlines() if l.startswith("tsugiki: error:")]
    assert len(err_lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for p in patterns:
        assert p in err_lines[0], err_lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp dirs left


def test_help_lists_verbs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for verb in ("merge", "inspect", "tiny", "demo"):
        assert verb in text


def test_a_wrong_choice_gets_the_nearest_one(capsys):
    """argparse's words for a wrong verb or choice, with the nearest name as tsugiki's other name lists give it."""
    for argv, hint in ((["merg"], "'merg'; did you mean 'merge'?"), (["tiny", "lm", "-o", "x", "--arch", "lama"],
                                                                       "'lama'; did you mean 'llama'?")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"invalid choice: {hint} (choose from " in err
    with pytest.raises(SystemExit):
        main(["eval", "--dtype", "fp99"])
    assert "invalid choice: 'fp99' (choose from 'float32', 'float16', 'bfloat16')" in capsys.readouterr().err


def test_merge_success_prints_output(tiny_siblings, tmp_path):
    a, b, _ = tiny_siblings.variants
    out = tmp_path / "out"
    res = run_cli("merge", write_recipe(tmp_path, linear(a, b)), "-o", out, "-q")
    assert res.returncode == 0, res.stderr
    assert str(out) in res.stdout and (out / "config.json").exists()


def test_shape_mismatch(tiny_siblings, tiny_mismatched_lm, tmp_path):
    out = tmp_path / "out"
    res = run_cli("merge", write_recipe(tmp_path, linear(tiny_siblings.base, tiny_mismatched_lm)), "-o", out)
    assert_clean_failure(res, out, "shape [704, 48]", str(tiny_mismatched_lm), "differs from [704, 32]")


def test_missing_tensor(tiny_siblings, tmp_path):
    broken = copy_model(tiny_siblings.variants[0], tmp_path / "broken",
                        lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.up_proj.weight"})
    out = tmp_path / "out"
    res = run_cli("merge", write_recipe(tmp_path, linear(tiny_siblings.base, broken)), "-o", out)
    assert_clean_failure(res, out, "model.layers.1.mlp.up_proj.weight", "missing")


def test_truncated_safetensors(tiny_siblings, tmp_path):
    broken = copy_model(tiny_siblings.variants[0], tmp_path / "broken", lambda t: t)
    f = broken / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    out = tmp_path / "out"
    res = run_cli("merge", write_recipe(tmp_path, linear(tiny_siblings.base, broken)), "-o", out)
    assert_clean_failure(res, out, str(f), "truncated")


def test_pickle_refused_then_allowed(tiny_siblings, tmp_path):
    pick = copy_model(tiny_siblings.variants[0], tmp_path / "pick", lambda t: t)
    torch.save(weights(pick), pick / "pytorch_model.bin")
    (pick / "model.safetensors").unlink()
    recipe = write_recipe(tmp_path, linear(tiny_siblings.base, pick))
    out = tmp_path / "out"
    assert_clean_failure(run_cli("merge", recipe, "-o", out), out, "pytorch_model.bin", "--allow-pickle")
    res = run_cli("merge", recipe, "-o", out, "--allow-pickle", "-q")
    assert res.returncode == 0, res.stderr


def test_nan_input_warned_and_nan_output_refused(tiny_siblings, tmp_path):
    def poison(t):
        t["model.norm.weight"] = t["model.norm.weight"].clone()
        t["model.norm.weight"][0] = float("nan")
        return t

    bad = copy_model(tiny_siblings.variants[0], tmp_path / "bad", poison)
    out = tmp_path / "out"
    res = run_cli("merge", write_recipe(tmp_path, linear(tiny_siblings.base, bad)), "-o", out, "-q")
    assert "model.norm.weight" in res.stderr and "NaN/Inf" in res.stderr  # the input warning
    assert_clean_failure(res, out, "model.norm.weight", "merged tensor contains NaN/Inf")


def test_yaml_errors_carry_line_numbers(tiny_siblings, tmp_path):
    out = tmp_path / "out"
    bad_yaml = write_recipe(tmp_path, "merge_method: linear\nmodels:\n  - model: [unclosed\n", "bad.yaml")
    res = run_cli("merge", bad_yaml, "-o", out)
    assert_clean_failure(res, out, "bad.yaml:")
    unknown = write_recipe(tmp_path, f"merge_method: lineer\nmodels:\n  - model: {tiny_siblings.base}\n", "unknown.yaml")
    res = run_cli("merge", unknown, "-o", out)
    assert_clean_failure(res, out, "unknown.yaml:1", "linear")


def test_existing_output_needs_force(tiny_siblings, tmp_path):
    a, b, _ = tiny_siblings.variants
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    recipe = write_recipe(tmp_path, linear(a, b))
    res = run_cli("merge", recipe, "-o", out)
    assert res.returncode == 2 and "--force" in res.stderr
    assert (out / "keep.txt").read_text() == "mine"
    res = run_cli("merge", recipe, "-o", out, "--force", "-q")  # not a folder tsugiki wrote: kept
    assert res.returncode == 2 and "keep.txt" in res.stderr and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert run_cli("merge", recipe, "-o", out, "--force", "-q").returncode == 0  # an empty folder is replaced
    res = run_cli("merge", recipe, "-o", out, "--force", "-q")  # and so is tsugiki's own output
    assert res.returncode == 0 and (out / "config.json").exists()


def test_failed_force_keeps_previous_output(tiny_siblings, tiny_mismatched_lm, tmp_path):
    out = tmp_path / "out"
    assert run_cli("merge", write_recipe(tmp_path, linear(*tiny_siblings.variants[:2])), "-o", out, "-q").returncode == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    res = run_cli("merge", write_recipe(tmp_path, linear(tiny_siblings.base, tiny_mismatched_lm)), "-o", out, "--force")
    assert res.returncode == 2 and {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_inspect_known_and_inferred(tiny_siblings, tmp_path):
    res = run_cli("inspect", tiny_siblings.base)
    assert res.returncode == 0 and "known architecture 'llama'" in res.stdout
    odd = tmp_path / "odd"
    odd.mkdir()
    tensors = {k.replace("model.", "transformer.", 1): v for k, v in load_file(tiny_siblings.base / "model.safetensors").items()}
    save_file(tensors, odd / "model.safetensors")
    res = run_cli("inspect", odd)
    assert res.returncode == 0 and "inferred" in res.stdout and "layers: 4" in res.stdout


def test_architecture_mismatch(tiny_siblings, tiny_mistral_siblings, tmp_path):
    out = tmp_path / "out"
    res = run_cli("merge", write_recipe(tmp_path, linear(tiny_siblings.base, tiny_mistral_siblings.base)), "-o", out)
    assert_clean_failure(res, out, "architecture", "MistralForCausalLM", "LlamaForCausalLM")


def test_merge_routes_llava_recipes_to_the_graft(tmp_path):
    from tsugiki.factory.vlm import build_graft_set

    world = build_graft_set(tmp_path / "graft")
    other = world.llms.variants[1]
    recipe = write_recipe(tmp_path, f"merge_method: linear\nmodels:\n  - {{model: {world.llava}, parameters: {{weight: 0.5}}}}\n"
                                    f"  - {{model: {other}, parameters: {{weight: 0.5}}}}\n")
    out = tmp_path / "out"
    res = run_cli("merge", recipe, "-o", out, "-q")
    assert res.returncode == 0, res.stderr
    src, got = weights(world.llava), weights(out)
    assert set(src) == set(got)
    vision = [k for k in src if k.startswith(("vision_tower.", "multi_modal_projector."))]
    assert vision and all(torch.equal(src[k], got[k]) for k in vision)
    assert not torch.equal(src["language_model.model.embed_tokens.weight"], got["language_model.model.embed_tokens.weight"])


def test_merge_routes_sdxl_recipes_and_score_fid(tmp_path):
    import json

    import numpy as np

    from tsugiki.factory.sdxl import build_tiny_sdxl

    a = build_tiny_sdxl(tmp_path / "a", seed=0)
    b = build_tiny_sdxl(tmp_path / "b", seed=0, unet_seed=1)
    recipe = write_recipe(tmp_path, f"merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.5}}}}\n"
                                    f"  - {{model: {b}, parameters: {{weight: 0.5}}}}\n")
    out = tmp_path / "out"
    res = run_cli("merge", recipe, "-o", out, "-q")
    assert res.returncode == 0, res.stderr
    ua, ub = weights(a / "unet"), weights(b / "unet")
    got = weights(out / "unet")
    assert set(got) == set(ua) and all(torch.allclose(got[k], 0.5 * ua[k] + 0.5 * ub[k], atol=1e-6) for k in got)
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (a / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(50, 4)))
    np.save(tmp_path / "y.npy", rng.normal(size=(50, 4)) + 1.0)
    res = run_cli("score", "fid", tmp_path / "x.npy", tmp_path / "y.npy")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["fid"] > 3.0  # mean shift of 1 in 4 dims contributes ≈ 4


def test_eval_t2i_two_word_spelling(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "t2i", "--help"])
    assert e.value.code == 0 and "--prompts" in capsys.readouterr().out


def test_eval_t2i_is_a_sub_verb_of_eval_beside_its_benchmarks(capsys):
    from tsugiki.cli import build_parser
    from tsugiki.commands.bench import cmd_eval
    from tsugiki.commands.images import cmd_eval_t2i

    parser = build_parser()
    args = parser.parse_args(["-v", "eval", "t2i", "pipe", "--prompts", "p.txt", "-o", "run", "--steps", "1"])
    assert args.func is cmd_eval_t2i and args.verbose and (args.pipeline, args.steps) == ("pipe", 1)
    args = parser.parse_args(["eval", "mgsm-ja", "mgsm-en", "--model", "m", "--limit", "2"])
    assert args.func is cmd_eval and (args.benchmarks, args.model, args.limit) == (["mgsm-ja", "mgsm-en"], ["m"], 2)
    assert parser.parse_args(["eval", "--list"]).list
    with pytest.raises(SystemExit) as e:  # a t2i option is no benchmark option
        parser.parse_args(["eval", "mgsm-ja", "--prompts", "p.txt"])
    assert e.value.code == 2 and "unrecognized arguments: --prompts" in capsys.readouterr().err


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("old, new, options", [(["tiny-models"], ["tiny", "lm"], ["-n", "1", "--kind", "perturbed"]),
                                               (["vlm", "tiny"], ["tiny", "vlm"], []),
                                               (["tiny-sdxl"], ["tiny", "sdxl"], ["-n", "1"])])
def test_old_tiny_spellings_are_aliases(tmp_path, capsys, old, new, options):
    """The old spelling builds the same files, prints the same lines, and says the new spelling once."""
    assert main([*new, "-o", str(tmp_path / "new"), *options]) == 0
    new_out, new_err = capsys.readouterr()
    assert main([*old, "-o", str(tmp_path / "old"), *options]) == 0
    old_out, old_err = capsys.readouterr()
    note = f"tsugiki: note: `tsugiki {' '.join(old)}` is now `tsugiki {' '.join(new)}`\n"
    assert old_err.startswith(note) and old_err.count("note:") == 1 and "note:" not in new_err
    assert old_out.replace(str(tmp_path / "old"), "OUT") == new_out.replace(str(tmp_path / "new"), "OUT")
    assert str(tmp_path / "new") in new_out
    assert _files(tmp_path / "old") == _files(tmp_path / "new") != {}
    with pytest.raises(SystemExit):
        main([*old[:-1], "--help"])
    assert f"(alias of tsugiki {' '.join(new)})" in capsys.readouterr().out


def _verbs(parser, path=()):
    """Every verb parser of the CLI, nested ones too, with its path."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _verbs(sub, (*path, name))


def test_one_cli_voice():
    """Every verb has a description, every option help, and -q is --quiet wherever it exists."""
    from tsugiki.cli import build_parser

    verbs = list(_verbs(build_parser()))
    assert len(verbs) > 15
    for path, sub in verbs:
        assert sub.description, f"{' '.join(path)}: no description"
        assert "%%" not in sub.description, f"{' '.join(path)}: a literal %% in the description"
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{' '.join(path)} {action.option_strings or action.dest}: no help"
            if "-q" in action.option_strings:
                assert action.option_strings == ["-q", "--quiet"], f"{' '.join(path)}: -q is {action.option_strings}"


def test_eval_t2i_is_not_listed_as_a_top_level_verb(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "eval-t2i" not in capsys.readouterr().out
