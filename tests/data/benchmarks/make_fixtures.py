"""Regenerate the committed fixture sets here (a test checks they equal a fresh build):

    python tests/data/benchmarks/make_fixtures.py
"""

from pathlib import Path

from tsugiki.benchmarks.samples import write_samples

if __name__ == "__main__":
    print(write_samples(Path(__file__).resolve().parent))
