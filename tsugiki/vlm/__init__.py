"""LLaVA-family surgery: merge or swap the language model, vision tower and projector untouched.

- `tsugiki.vlm.keymap`: the LLaVA ↔ standalone-LLM key map (data in `vlm/keymaps/llava.json`).
- `tsugiki.vlm.sources`: a VLM checkpoint validated and split; its language model as a TensorSource.
- `tsugiki.vlm.graft`: shape and vocabulary checks shared by the disk and in-memory paths.
- `tsugiki.vlm.merge`: `is_vlm_recipe`, `merge_vlm_to_disk` (what `tsugiki merge` runs for VLM recipes).
- `tsugiki.vlm.inmemory`: `VlmLanguageModelMerger`, re-merging a loaded VLM's language model per candidate.
- `tsugiki.vlm.generate`: Japanese VQA prompts and `VQAPredictor.predict(images, questions)`.
- `tsugiki.vlm.predictor`: `VLMPredictor.predict(items)`, the benchmarks' predictor interface.
"""
