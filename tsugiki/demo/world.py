"""The demo's small drawn world: the colour and shape words the VLM and SDXL stages share.

The VLM stage draws scenes of one coloured shape and asks about them in English (to align the LLaVA's
vision side) and in Japanese (to score the grafts); the SDXL stage draws the same world. Japanese
references are short content answers (``赤``, ``円``), as JA-VG-VQA-500's are: no formulaic suffix that a
constant answer could match.
"""

from __future__ import annotations

# English name, Japanese name, RGB used when drawing
COLOURS: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("red", "赤", (220, 30, 30)),
    ("blue", "青", (30, 60, 220)),
    ("white", "白", (245, 245, 245)),
    ("black", "黒", (15, 15, 15)),
    ("brown", "茶色", (130, 80, 40)),
    ("gold", "金色", (230, 190, 40)),
)
SHAPES: tuple[tuple[str, str], ...] = (("circle", "円"), ("square", "四角"), ("triangle", "三角"))

# Other Japanese words that name the same colour or shape (content accuracy accepts them; the rougeL_ja
# references stay the words above). A form that contains the word (白色, 四角形, 三角形) needs no entry.
JA_ALSO: dict[str, tuple[str, ...]] = {"茶色": ("茶",), "金色": ("金",), "円": ("丸",), "四角": ("正方形",)}

# Questions about one shape in a picture.
EN_QUESTIONS: dict[str, str] = {"colour": "What colour is it?", "shape": "What shape is it?"}
JA_QUESTIONS: dict[str, str] = {"colour": "この図形は何色ですか？", "shape": "この図形の形は何ですか？"}
